"""Shows how the `agentwire` package handles failures: a transient failure (503, 429, a
lost connection) is retried with the same event_id, waiting at least the server's
Retry-After, so a retry cannot duplicate an event; a refused event (409, 413, 422) raises
a typed error naming the server's code, the field and the reason, and is not retried.

    pip install -e clients/python
    python3 examples/python/publish_with_retries.py --api-key my-publish-key --user alice
"""

import argparse
import os
import sys
import time

try:
    from agentwire import PayloadTooLarge, Publisher, RunViolation, new_event_id
except ImportError:
    sys.exit("this example needs the agentwire package: pip install -e clients/python")


class FlightSearchTimedOut(Exception):
    pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("AGENTWIRE_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--api-key", default=os.environ.get("AGENTWIRE_API_KEY"))
    parser.add_argument("--user", default="alice")
    parser.add_argument("--run", default=f"run-{int(time.time() * 1000)}")
    args = parser.parse_args()
    if not args.api_key:
        parser.error("give a publish-only API key: --api-key or AGENTWIRE_API_KEY")

    def on_retry(attempt, error, delay):
        print(f"attempt {attempt} failed ({error}); retrying in {delay:.2f}s")

    publisher = Publisher(args.url, args.api_key, on_retry=on_retry)

    try:
        with publisher.run(args.user, "thread-1", args.run, agent_name="retry-demo") as run:
            # 1. An event that carries its own event_id, published twice (as after an
            #    answer lost on the way back): the server answers the second with the
            #    first's seq instead of publishing it again.
            thought = {"user_id": args.user, "type": "agent_thinking", "thread_id": "thread-1",
                       "run_id": run.run_id, "event_id": new_event_id(),
                       "data": {"thought": "Searching flights to Lisbon."}}
            first = publisher.publish(thought)
            again = publisher.publish(thought)
            print(f"published twice with one event_id: seq {first.seq} then {again.seq}")
            if first.seq != again.seq:
                print("unexpected: a retry created a second event")
                return 1

            # 2. A refused event: a tool completion for a call that was never opened.
            #    Sending it again cannot help, so it is not retried.
            try:
                run.tool_completed("never-opened", "search_flights", None)
                print("unexpected: the bad event was accepted")
                return 1
            except RunViolation as e:
                print(f"refused as expected: {e.status} {e.error} field={e.field} message={e.message}")

            # 3. A body over the server's limit (4 MiB by default) is refused with 413
            #    before it is sent, and not retried.
            blob = {"user_id": args.user, "type": "custom", "data": {"name": "blob", "value": "x" * 200_000}}
            try:
                publisher.publish_many([blob] * 25)
                print("unexpected: 5 MB were accepted")
                return 1
            except PayloadTooLarge as e:
                print(f"refused as expected: {e.status} {e.error}: {e.message}")

            # 4. The tool fails: its tool_completed says so (is_error), and the exception
            #    leaving the block ends the run with agent_error.
            with run.tool("search_flights", {"to": "LIS"}):
                raise FlightSearchTimedOut("the flight search did not answer within 30 s")
    except FlightSearchTimedOut:
        print(f"run {run.run_id} ended with agent_error")
    return 0


if __name__ == "__main__":
    sys.exit(main())
