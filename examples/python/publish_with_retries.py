"""Shows agentwire publish error handling: a transient failure (429, 503, a lost
connection) is retried with the same event_id, so the retry cannot duplicate the event; a
refused event (4xx) is reported with its code, field and message and not retried. Standard
library only.

    python3 examples/python/publish_with_retries.py --url http://127.0.0.1:8080 --user alice
"""

import argparse
import os
import sys
import time

from agentwire_publish import Publisher, PublishError, RetryableError, dev_credentials, new_event_id


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("AGENTWIRE_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--api-key", default=os.environ.get("AGENTWIRE_API_KEY"))
    parser.add_argument("--credentials-file", default=None)
    parser.add_argument("--user", default="alice")
    parser.add_argument("--run", default=f"run-{int(time.time() * 1000)}")
    args = parser.parse_args()

    api_key = args.api_key or dev_credentials(args.credentials_file)["api_key"]
    publisher = Publisher(args.url, api_key)

    def on_retry(attempt, error, delay):
        print(f"attempt {attempt} failed ({error}); retrying in {delay:.2f}s")

    # 1. The run starts. The event carries its own event_id, so publishing it again (a
    #    retry after a lost response) answers the first seq instead of starting the run
    #    twice: the server recognises the event_id even though a second agent_started
    #    would break the run's lifecycle.
    started = {"user_id": args.user, "type": "agent_started", "thread_id": "thread-1", "run_id": args.run,
               "event_id": new_event_id(), "data": {"agent_name": "retry-demo"}}
    [first] = publisher.publish_with_retry(started, on_retry=on_retry)
    [again] = publisher.publish_with_retry(started, on_retry=on_retry)
    print(f"published twice with one event_id: seq {first['seq']} then {again['seq']}")
    if first["seq"] != again["seq"]:
        print("unexpected: a retry created a second event")
        return 1

    # 2. A refused event: a tool completion for a call that was never opened. The server
    #    names the field and the violation (409); retrying the same body cannot help, so
    #    we don't.
    bad = {"user_id": args.user, "type": "tool_completed", "thread_id": "thread-1", "run_id": args.run,
           "data": {"tool_call_id": "never-opened", "tool_name": "search"}}
    try:
        publisher.publish(bad)
        print("unexpected: the bad event was accepted")
        return 1
    except PublishError as e:
        print(f"refused as expected: status={e.status} error={e.code} field={e.field} message={e.message}")

    # 3. The run fails. Transient failures (429, 503, connection refused) are retried with
    #    backoff, always with the same event_id.
    failed = {"user_id": args.user, "type": "agent_error", "thread_id": "thread-1", "run_id": args.run,
              "event_id": new_event_id(),
              "data": {"message": "The flight search timed out.", "code": "tool_timeout", "retryable": True}}
    try:
        [result] = publisher.publish_with_retry(failed, on_retry=on_retry)
    except RetryableError as e:
        print(f"gave up after retries: {e}")
        return 1
    print(f"run ended with agent_error at seq {result['seq']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
