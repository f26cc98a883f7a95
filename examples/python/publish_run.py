"""Publishes one realistic agent run to agentwire with the `agentwire` package: started,
thinking, two tool calls, the answer streamed word by word, completed.

    pip install -e clients/python
    cargo run -p agentwire-server -- --publish-api-keys my-publish-key     # another terminal
    python3 examples/python/publish_run.py --api-key my-publish-key --user alice

The API key comes from --api-key or AGENTWIRE_API_KEY. Agents get a publish-only key
(--publish-api-keys): it may publish and nothing else.
"""

import argparse
import logging
import os
import sys
import time

try:
    from agentwire import Publisher
except ImportError:
    sys.exit("this example needs the agentwire package: pip install -e clients/python")

# The run, step by step: what the agent thought, and each tool it called with what the
# tool returned (the tools are simulated here).
STEPS = [
    ("thinking", "The user wants a weekend in Lisbon. Check flights, then the weather."),
    ("tool", "search_flights", {"from": "BER", "to": "LIS", "date": "2026-12-05"},
     {"flights": [{"number": "TP 551", "price_eur": 129}]}),
    ("thinking", "One direct flight at 129 EUR. Now the forecast."),
    ("tool", "weather", {"city": "Lisbon", "days": 2}, {"forecast": ["sunny, 17 C", "cloudy, 15 C"]}),
]
ANSWER = "TP 551 on Dec 5 for 129 EUR; sunny Saturday, cloudy Sunday."


def words(text):
    """The answer as a model streams it: word by word, each with its trailing space."""
    parts = text.split(" ")
    return [p + " " for p in parts[:-1]] + parts[-1:]


def streamed(pieces, delay):
    """Yields the pieces with a pause before each, like a model writing them."""
    for piece in pieces:
        time.sleep(delay)
        yield piece


def publish_with_the_run_helper(publisher, user, thread, run_id, delay):
    """One request per event: agent_started on entering the block, the answer as
    message_delta pieces and message_completed, agent_completed on leaving it
    (agent_error, had it raised)."""
    with publisher.run(user, thread, run_id, agent_name="travel-planner") as run:
        for step, (kind, *rest) in enumerate(STEPS, start=1):
            time.sleep(delay)
            if kind == "thinking":
                run.thinking(rest[0], step=step)
            else:
                name, arguments, result = rest
                with run.tool(name, arguments) as call:
                    call.result = result
        run.result = run.stream_message(streamed(words(ANSWER), delay / 4))


def publish_as_one_batch(publisher, user, thread, run_id):
    """The same run as the events the API takes, in one request: all or nothing, the
    server checks the whole run before it publishes any of it."""

    def event(kind, data):
        return {"user_id": user, "type": kind, "thread_id": thread, "run_id": run_id, "data": data}

    events = [event("agent_started", {"agent_name": "travel-planner"})]
    calls = 0
    for step, (kind, *rest) in enumerate(STEPS, start=1):
        if kind == "thinking":
            events.append(event("agent_thinking", {"thought": rest[0], "step": step}))
        else:
            calls += 1
            name, arguments, result = rest
            call = {"tool_call_id": f"tc-{calls}", "tool_name": name}
            events.append(event("tool_executing", {**call, "arguments": arguments}))
            events.append(event("tool_completed", {**call, "result": result, "is_error": False}))
    for piece in words(ANSWER):
        events.append(event("message_delta", {"message_id": "msg-1", "delta": piece}))
    events.append(event("message_completed", {"message_id": "msg-1"}))
    events.append(event("agent_completed", {"result": ANSWER}))
    publisher.publish_many(events)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("AGENTWIRE_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--api-key", default=os.environ.get("AGENTWIRE_API_KEY"))
    parser.add_argument("--user", default="alice")
    parser.add_argument("--thread", default="thread-1")
    parser.add_argument("--run", default=f"run-{int(time.time() * 1000)}")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between steps")
    parser.add_argument("--batch", action="store_true", help="publish the whole run in one request")
    args = parser.parse_args()
    if not args.api_key:
        parser.error("give a publish-only API key: --api-key or AGENTWIRE_API_KEY")

    # The package logs every event it published, with its seq, at DEBUG.
    logging.basicConfig(stream=sys.stdout, format="%(message)s")
    logging.getLogger("agentwire").setLevel(logging.DEBUG)

    publisher = Publisher(args.url, args.api_key)
    if args.batch:
        publish_as_one_batch(publisher, args.user, args.thread, args.run)
    else:
        publish_with_the_run_helper(publisher, args.user, args.thread, args.run, args.delay)
    return 0


if __name__ == "__main__":
    sys.exit(main())
