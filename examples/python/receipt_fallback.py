"""Publishes a short agent run, then asks agentwire whether the user saw its answer, and
falls back to another channel (here: a line on stdout standing for an e-mail or a push
notification) when no client acknowledged it in time.

    cargo run -p agentwire-server -- --publish-api-keys my-publish-key     # another terminal
    python3 examples/python/receipt_fallback.py --api-key my-publish-key --user alice

Only the standard library: the publish answer names each event's receipt path, and
`GET <receipt>?wait_acked=10s` answers as soon as the run's terminal event is
acknowledged by one of the user's clients, or when the time is up (docs/protocol.md §8.5).
With `--broker redis` any node answers for every node's clients. A publisher that would
rather be told than wait sets `--receipt-webhook-url` instead (§8.5, the receipt webhook).
"""

import argparse
import json
import os
import sys
import urllib.request


def call(url, api_key, method="GET", body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {api_key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.load(answer)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("AGENTWIRE_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--api-key", default=os.environ.get("AGENTWIRE_API_KEY"))
    parser.add_argument("--user", required=True)
    parser.add_argument("--run", default="run-receipt")
    parser.add_argument("--wait", default="10s", help="how long to wait for the ack")
    args = parser.parse_args()
    if not args.api_key:
        sys.exit("give --api-key or AGENTWIRE_API_KEY")

    def event(kind, data):
        return {"user_id": args.user, "type": kind, "thread_id": "t1", "run_id": args.run, "data": data}

    answer = call(
        f"{args.url}/v1/events",
        args.api_key,
        "POST",
        [
            event("agent_started", {"agent_name": "reporter"}),
            event("agent_completed", {"result": "Your report is ready."}),
        ],
    )
    receipt = answer["results"][-1]["receipt"]
    print(f"published the run; its receipt: {receipt}")
    run = call(f"{args.url}{receipt}?wait_acked={args.wait}", args.api_key)
    terminal = run["terminal"] or {}
    if terminal.get("acked"):
        print(f"acknowledged by the user's client (seq {terminal['seq']}): no fallback")
    elif terminal.get("delivered"):
        print("delivered but not acknowledged in time: fallback: e-mail sent")
    else:
        print("never delivered (no client connected): fallback: e-mail sent")


if __name__ == "__main__":
    main()
