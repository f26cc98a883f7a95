"""Minimal publisher for agentwire's HTTP API (POST /v1/events), standard library only.

Used by publish_run.py and publish_with_retries.py. See docs/protocol.md, section 8.
"""

import json
import os
import random
import time
import urllib.error
import urllib.request
import uuid


class PublishError(Exception):
    """The server refused the request; retrying the same body cannot help."""

    def __init__(self, status, code, message, field):
        super().__init__(f"{status} {code}: {message}" + (f" (field {field!r})" if field else ""))
        self.status = status
        self.code = code
        self.message = message
        self.field = field


class RetryableError(Exception):
    """The request may succeed later (429, 503, connection failure)."""

    def __init__(self, message, retry_after=None):
        super().__init__(message)
        self.retry_after = retry_after


def dev_credentials(path=None):
    """Reads the development credentials file the server writes with no configuration."""
    path = path or os.environ.get("AGENTWIRE_DEV_CREDENTIALS_FILE")
    if not path:
        state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
        path = os.path.join(state, "agentwire", "dev-credentials.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def new_event_id():
    """A publisher-side event id; reusing it on retry makes the publish idempotent."""
    return str(uuid.uuid4())


class Publisher:
    def __init__(self, base_url, api_key, timeout=5.0):
        self.url = base_url.rstrip("/") + "/v1/events"
        self.api_key = api_key
        self.timeout = timeout

    def publish(self, events):
        """Publishes one event (a dict) or a list; returns the list of results."""
        body = json.dumps(events).encode("utf-8")
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.load(response)["results"]
        except urllib.error.HTTPError as e:
            retry_after = e.headers.get("Retry-After")
            try:
                detail = json.load(e)
            except ValueError:
                detail = {}
            # Every error answer is {"error": code, "message": ..., "field": path or null}.
            if e.code in (429, 503):
                raise RetryableError(f"{e.code} {detail.get('error')}: {detail.get('message')}", retry_after) from None
            raise PublishError(e.code, detail.get("error"), detail.get("message"), detail.get("field")) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            raise RetryableError(f"connection failed: {e}") from None

    def publish_with_retry(self, events, attempts=5, base_delay=0.1, max_delay=2.0, on_retry=None):
        """Publishes, retrying what can be retried with exponential backoff and jitter.

        Every attempt sends the same body, so events carrying their own event_id are never
        duplicated: the server answers an event_id it already accepted with the first seq.
        """
        for attempt in range(1, attempts + 1):
            try:
                return self.publish(events)
            except RetryableError as e:
                if attempt == attempts:
                    raise
                delay = min(max_delay, base_delay * 2 ** (attempt - 1))
                if e.retry_after is not None:
                    delay = max(delay, float(e.retry_after))
                delay = delay * (0.5 + random.random() / 2)
                if on_retry:
                    on_retry(attempt, e, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")
