"""Publishes one realistic agent run to agentwire: started, thinking, two tool calls,
completed. Standard library only.

    python3 examples/python/publish_run.py --url http://127.0.0.1:8080 --user alice

The API key comes from --api-key, AGENTWIRE_API_KEY, or the development credentials file
the server writes when it runs with no configuration.
"""

import argparse
import os
import sys
import time

from agentwire_publish import Publisher, dev_credentials, new_event_id


def run_events(user, thread, run):
    def event(kind, data):
        return {"user_id": user, "type": kind, "thread_id": thread, "run_id": run,
                "event_id": new_event_id(), "data": data}

    return [
        event("agent_started", {"agent_name": "travel-planner"}),
        event("agent_thinking", {"thought": "The user wants a weekend in Lisbon. Check flights, then the weather.", "step": 1}),
        event("tool_executing", {"tool_call_id": "tc-1", "tool_name": "search_flights",
                                 "arguments": {"from": "BER", "to": "LIS", "date": "2026-12-05"}}),
        event("tool_completed", {"tool_call_id": "tc-1", "tool_name": "search_flights",
                                 "result": {"flights": [{"number": "TP 551", "price_eur": 129}]},
                                 "is_error": False, "duration_ms": 184}),
        event("agent_thinking", {"thought": "One direct flight at 129 EUR. Now the forecast.", "step": 2}),
        event("tool_executing", {"tool_call_id": "tc-2", "tool_name": "weather",
                                 "arguments": {"city": "Lisbon", "days": 2}}),
        event("tool_completed", {"tool_call_id": "tc-2", "tool_name": "weather",
                                 "result": {"forecast": ["sunny, 17 C", "cloudy, 15 C"]},
                                 "is_error": False, "duration_ms": 95}),
        event("agent_completed", {"result": "TP 551 on Dec 5 for 129 EUR; sunny Saturday, cloudy Sunday.",
                                  "duration_ms": 1240}),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("AGENTWIRE_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--api-key", default=os.environ.get("AGENTWIRE_API_KEY"))
    parser.add_argument("--credentials-file", default=None)
    parser.add_argument("--user", default="alice")
    parser.add_argument("--thread", default="thread-1")
    parser.add_argument("--run", default=f"run-{int(time.time() * 1000)}")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between events")
    parser.add_argument("--batch", action="store_true", help="publish the whole run in one request")
    args = parser.parse_args()

    api_key = args.api_key or dev_credentials(args.credentials_file)["api_key"]
    publisher = Publisher(args.url, api_key)
    events = run_events(args.user, args.thread, args.run)
    if args.batch:
        # All or nothing: the server checks the whole run before publishing any of it.
        results = publisher.publish_with_retry(events)
    else:
        results = []
        for event in events:
            results.extend(publisher.publish_with_retry(event))
            if args.delay:
                time.sleep(args.delay)
    for event, result in zip(events, results):
        print(f"{event['type']:<16} seq={result['seq']} event_id={result['event_id']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
