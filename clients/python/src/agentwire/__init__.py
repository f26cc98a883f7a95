"""agentwire for Python: publish agent events to an agentwire server.

agentwire delivers each event to that user's open WebSocket connections, in order and
without loss across reconnects. This package is the publishing side, over the server's
HTTP API (``POST /v1/events``)::

    from agentwire import Publisher

    publisher = Publisher("http://127.0.0.1:8080", api_key)   # a publish-only key
    with publisher.run("alice", "thread-1", agent_name="planner") as run:
        run.thinking("Looking for flights.")
        with run.tool("search_flights", {"to": "LIS"}) as call:
            call.result = search_flights(to="LIS")
        run.result = "TP 551, 129 EUR"

:class:`Publisher` needs nothing beyond the standard library; :class:`AsyncPublisher`
(``from agentwire import AsyncPublisher``) needs the ``async`` extra (httpx).
"""

from typing import TYPE_CHECKING, Any

from ._auth import dev_credentials, mint_token
from ._errors import (
    AgentwireError,
    ApiError,
    BadRequest,
    Conflict,
    EventIdConflict,
    Forbidden,
    InvalidEvent,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
    RateLimited,
    RunViolation,
    ServerError,
    TransportError,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from ._retry import NO_RETRY, OnRetry, RetryPolicy
from ._run import RUN_DROPPED, RUN_RAISED, AsyncRun, AsyncToolCall, Run, ToolCall
from ._sync import Publisher
from ._version import __version__
from ._wire import Accepted, Event, History, new_event_id

if TYPE_CHECKING:
    from ._async import AsyncPublisher

__all__ = [
    "Accepted",
    "AgentwireError",
    "ApiError",
    "AsyncPublisher",
    "AsyncRun",
    "AsyncToolCall",
    "BadRequest",
    "Conflict",
    "Event",
    "EventIdConflict",
    "Forbidden",
    "History",
    "InvalidEvent",
    "NO_RETRY",
    "NotFound",
    "OnRetry",
    "PayloadTooLarge",
    "ProtocolError",
    "Publisher",
    "RUN_DROPPED",
    "RUN_RAISED",
    "RateLimited",
    "RetryPolicy",
    "Run",
    "RunViolation",
    "ServerError",
    "ToolCall",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "__version__",
    "dev_credentials",
    "mint_token",
    "new_event_id",
]


def __getattr__(name: str) -> Any:
    # AsyncPublisher is imported on first use, so the sync client never needs httpx.
    if name == "AsyncPublisher":
        from ._async import AsyncPublisher

        return AsyncPublisher
    raise AttributeError(f"module 'agentwire' has no attribute {name!r}")
