"""What travels over HTTP: events going out, acceptances and history coming back.

Shared by the sync and the async publisher, so both send and read exactly the same.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ._errors import ProtocolError

#: An event to publish: ``user_id``, ``type``, ``thread_id``, ``run_id``, ``data`` and
#: optionally ``event_id`` (docs/protocol.md, section 8).
Event = Mapping[str, Any]

#: The path of the publish API under the server's base URL.
PUBLISH_PATH = "/v1/events"

log = logging.getLogger("agentwire")


@dataclass(frozen=True)
class Accepted:
    """The server accepted an event: its place in the user's stream."""

    #: Position in the user's stream (per user, strictly increasing by one).
    seq: int
    #: The event's id: the publisher's own, or the one the server gave it.
    event_id: str
    #: When the server accepted it, in milliseconds since the Unix epoch.
    ts: int


@dataclass(frozen=True)
class History:
    """A page of a user's stream, oldest first (``GET /v1/users/{user}/events``)."""

    user_id: str
    #: The stream the seqs belong to.
    epoch: str
    #: The newest seq of the stream.
    last_seq: int
    #: ``{"from_seq": a, "to_seq": b}`` when history no longer holds events after
    #: ``after_seq``, else ``None``.
    gap: Optional[Dict[str, int]]
    #: The events, exactly as WebSocket clients received them.
    events: List[Dict[str, Any]]


def new_event_id() -> str:
    """A fresh UUIDv7 (time-ordered) for an event. An event that carries its own id can
    be published again safely: the server answers a repeated id with the first
    acceptance instead of publishing it twice."""
    ms = time.time_ns() // 1_000_000
    value = (ms & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))


def with_event_ids(events: Sequence[Event]) -> List[Dict[str, Any]]:
    """Copies of `events`, each with an ``event_id`` (a new one where it had none), so
    every retry of the request carries the same ids."""
    out = []
    for i, event in enumerate(events):
        if not isinstance(event, Mapping):
            raise TypeError(f"event [{i}] is a {type(event).__name__}, not a mapping")
        copy = dict(event)
        if not copy.get("event_id"):
            copy["event_id"] = new_event_id()
        out.append(copy)
    return out


def encode(payload: Union[Dict[str, Any], List[Dict[str, Any]]]) -> bytes:
    """The JSON body of a request."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"{what} is not JSON: {e}") from None


def decode_results(body: bytes, events: Sequence[Mapping[str, Any]]) -> List[Accepted]:
    """The acceptances of a ``200`` answer to a publish of ``events``, one per event
    (each logged at DEBUG on the ``agentwire`` logger)."""
    expected = len(events)
    parsed = _json(body, "the publish answer")
    try:
        results = [
            Accepted(seq=int(r["seq"]), event_id=str(r["event_id"]), ts=int(r["ts"]))
            for r in parsed["results"]
        ]
    except (TypeError, KeyError, ValueError) as e:
        raise ProtocolError(f"the publish answer has no readable results: {e!r}") from None
    if len(results) != expected:
        raise ProtocolError(f"{len(results)} results for {expected} events")
    for event, accepted in zip(events, results):
        log.debug("published %-16s seq=%d event_id=%s", event.get("type"), accepted.seq, accepted.event_id)
    return results


def decode_history(body: bytes) -> History:
    """The page of a ``200`` answer to a history read."""
    parsed = _json(body, "the history answer")
    try:
        return History(
            user_id=str(parsed["user_id"]),
            epoch=str(parsed["epoch"]),
            last_seq=int(parsed["last_seq"]),
            gap=parsed.get("gap"),
            events=list(parsed["events"]),
        )
    except (TypeError, KeyError, ValueError) as e:
        raise ProtocolError(f"the history answer is not readable: {e!r}") from None


def split_url(url: str) -> Tuple[str, str, int, str]:
    """``(scheme, host, port, base path)`` of the server's base URL."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/")
