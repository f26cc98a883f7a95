"""The errors of the agentwire client: one class per way a request can fail."""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any, Dict, Mapping, Optional, Type


class AgentwireError(Exception):
    """Base of every error this package raises."""

    #: Whether sending the same request again may succeed.
    retryable: bool = False


class TransportError(AgentwireError):
    """No answer came: the connection failed, broke, or timed out.

    The request may or may not have been accepted. Publishing the same events again is
    safe: they carry the same ``event_id``, and the server answers an ``event_id`` it has
    already accepted with the first acceptance.
    """

    retryable = True


class ProtocolError(AgentwireError):
    """The server answered something this client cannot read (not agentwire, or a newer
    version that changed the answer's shape)."""


class ApiError(AgentwireError):
    """The server refused the request with an HTTP error status.

    Attributes:
        status: the HTTP status.
        error: the server's machine-readable code (``"invalid_event"``, ``"run_violation"``,
            ``"rate_limited"``, …).
        message: what is wrong, for people.
        field: the path of the offending field (``"[1].data.tool_call_id"``), or ``None``
            when the error is not about one field.
        retry_after: seconds the server asked to wait before retrying (``Retry-After``),
            or ``None``.
    """

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        field: Optional[str] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(status, error, message, field)
        self.status = status
        self.error = error
        self.message = message
        self.field = field
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        return f"{self.status} {self.error}: {self.message}{where}"


class BadRequest(ApiError):
    """400: the body is not JSON, not an event or an array of events, or nests too deep."""


class Unauthorized(ApiError):
    """401: no API key, or one the server does not know."""


class Forbidden(ApiError):
    """403: the API key may not do this (a publish-only key reading history)."""


class NotFound(ApiError):
    """404: no such endpoint (a wrong base URL)."""


class Conflict(ApiError):
    """409: the event cannot be accepted as it stands; sending it again will not help."""


class RunViolation(Conflict):
    """409 ``run_violation``: the event breaks its run's lifecycle (a tool completed that
    was never started, an event after the run ended, …)."""


class EventIdConflict(Conflict):
    """409 ``event_id_conflict``: the ``event_id`` was already accepted for a different
    event."""


class PayloadTooLarge(ApiError):
    """413: an event, the batch or the whole body is larger than the server allows.
    ``field`` names the event of a batch when one event is too large."""


class UnsupportedMediaType(ApiError):
    """415: the body was not sent as ``application/json``."""


class InvalidEvent(ApiError):
    """422: well-formed JSON with a bad field: ``field`` names it."""


class RateLimited(ApiError):
    """429: the API key publishes faster than the server allows; nothing was published.
    ``retry_after`` says when the events will fit."""

    retryable = True


class ServerError(ApiError):
    """500 and other server failures that retrying cannot mend."""


class Unavailable(ApiError):
    """503 (502, 504): the server cannot publish now; retrying with the same event ids
    is safe. ``field`` names the first event of a batch that was not published."""

    retryable = True


_BY_CODE: Dict[str, Type[ApiError]] = {
    "bad_request": BadRequest,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "run_violation": RunViolation,
    "event_id_conflict": EventIdConflict,
    "payload_too_large": PayloadTooLarge,
    "unsupported_media_type": UnsupportedMediaType,
    "invalid_event": InvalidEvent,
    "rate_limited": RateLimited,
    "internal": ServerError,
    "unavailable": Unavailable,
}

_BY_STATUS: Dict[int, Type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: RunViolation,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: InvalidEvent,
    429: RateLimited,
    500: ServerError,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}

# The code of each status in the error shape that had none (`{"field","reason"}`).
_CODE_OF_STATUS: Dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "run_violation",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_event",
    429: "rate_limited",
    500: "internal",
    502: "unavailable",
    503: "unavailable",
    504: "unavailable",
}


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or ``None``."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(int(value)))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_response(
    status: int, body: bytes, retry_after: Optional[str] = None
) -> ApiError:
    """The typed error for an HTTP error answer: its status, body and ``Retry-After``.

    The body is ``{"error": code, "message": text, "field": path-or-null}``.
    """
    try:
        parsed: Any = json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, ValueError):
        parsed = None
    detail: Mapping[str, Any] = parsed if isinstance(parsed, dict) else {}
    error = detail.get("error")
    message = detail.get("message")
    if not isinstance(error, str) and "reason" in detail:
        # The shape the server answered before `{"error","message","field"}`:
        # `{"field","reason"}`, with no code. Reading it can go once no server in use
        # answers it any more.
        error = _CODE_OF_STATUS.get(status)
        message = detail.get("reason")
    if not isinstance(error, str):
        error = _CODE_OF_STATUS.get(status, f"http_{status}")
    if not isinstance(message, str):
        text = body.decode("utf-8", "replace").strip()
        message = text[:500] if text else f"HTTP {status}"
    field = detail.get("field")
    cls = _BY_CODE.get(error) or _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else ApiError
    return cls(
        status,
        error,
        message,
        field if isinstance(field, str) else None,
        parse_retry_after(retry_after),
    )
