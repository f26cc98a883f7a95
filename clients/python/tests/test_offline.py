"""What needs no server: reading error bodies (both shapes), Retry-After, the retry
policy, event ids and tokens."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import time
import uuid

import pytest

from agentwire import (
    ApiError,
    EventIdConflict,
    InvalidEvent,
    PayloadTooLarge,
    RateLimited,
    RetryPolicy,
    RunViolation,
    ServerError,
    TransportError,
    Unavailable,
    mint_token,
    new_event_id,
)
from agentwire._errors import error_from_response, parse_retry_after


def body(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_the_error_shape_names_code_message_and_field() -> None:
    e = error_from_response(
        422,
        body({"error": "invalid_event", "message": "missing field `tool_call_id`", "field": "[1].data.tool_call_id"}),
    )
    assert isinstance(e, InvalidEvent)
    assert (e.status, e.error, e.field) == (422, "invalid_event", "[1].data.tool_call_id")
    assert e.message == "missing field `tool_call_id`"
    assert "[1].data.tool_call_id" in str(e)


def test_a_409_is_typed_by_its_code() -> None:
    conflict = error_from_response(409, body({"error": "event_id_conflict", "message": "m", "field": "[0].event_id"}))
    assert isinstance(conflict, EventIdConflict)
    violation = error_from_response(409, body({"error": "run_violation", "message": "UnknownToolCall", "field": None}))
    assert isinstance(violation, RunViolation)
    assert violation.field is None


def test_the_older_field_reason_shape_is_read_too() -> None:
    e = error_from_response(409, body({"field": "data.tool_call_id", "reason": "UnknownToolCall: tc9"}))
    assert isinstance(e, RunViolation)
    assert (e.error, e.message, e.field) == ("run_violation", "UnknownToolCall: tc9", "data.tool_call_id")
    too_large = error_from_response(413, body({"field": None, "reason": "the request body is larger than 4194304 bytes"}))
    assert isinstance(too_large, PayloadTooLarge)
    assert too_large.error == "payload_too_large"


def test_retryable_errors_carry_retry_after() -> None:
    limited = error_from_response(429, body({"error": "rate_limited", "message": "m", "field": None}), "3")
    assert isinstance(limited, RateLimited) and limited.retryable
    assert limited.retry_after == 3.0
    unavailable = error_from_response(503, b"", "1")
    assert isinstance(unavailable, Unavailable) and unavailable.retryable
    assert unavailable.error == "unavailable" and unavailable.message == "HTTP 503"


def test_bodies_that_are_not_ours_still_give_a_typed_error() -> None:
    proxy = error_from_response(502, b"<html>Bad Gateway</html>")
    assert isinstance(proxy, Unavailable)
    assert "Bad Gateway" in proxy.message
    teapot = error_from_response(418, b"")
    assert type(teapot) is ApiError and not teapot.retryable
    internal = error_from_response(500, body({"error": "internal", "message": "broker refused", "field": "[2]"}))
    assert isinstance(internal, ServerError) and not internal.retryable


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (parse_retry_after(later) or 0) <= 31


def test_the_retry_policy_backs_off_and_honours_retry_after() -> None:
    policy = RetryPolicy(attempts=4, initial_delay=1.0, max_delay=3.0, multiplier=2.0, jitter=0.0, max_retry_after=10)
    lost = TransportError("lost")
    assert [policy.delay(n, lost) for n in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, None]
    limited = RateLimited(429, "rate_limited", "m", None, 5.0)
    assert policy.delay(1, limited) == 5.0, "never shorter than Retry-After"
    assert policy.delay(1, RateLimited(429, "rate_limited", "m", None, 11.0)) is None, "too long to wait"
    assert policy.delay(1, InvalidEvent(422, "invalid_event", "m")) is None, "final"


def test_jitter_takes_off_at_most_its_share() -> None:
    policy = RetryPolicy(initial_delay=1.0, jitter=0.5)
    delays = [policy.delay(1, TransportError("x")) for _ in range(200)]
    assert all(d is not None and 0.5 <= d <= 1.0 for d in delays)


def test_event_ids_are_uuid_v7_and_distinct() -> None:
    ids = [new_event_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122


def test_a_minted_token_is_an_hs256_jwt_for_the_user() -> None:
    token = mint_token("s3cret", "auth0|123", ttl=60, issuer="me", audience="agentwire")
    header, payload, signature = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    claims = json.loads(base64.urlsafe_b64decode(pad(payload)))
    assert json.loads(base64.urlsafe_b64decode(pad(header)))["alg"] == "HS256"
    assert claims["sub"] == "auth0|123" and claims["iss"] == "me" and claims["aud"] == "agentwire"
    assert claims["exp"] - claims["iat"] == 60
    expected = hmac.new(b"s3cret", f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(pad(signature)) == expected
    with pytest.raises(ValueError):
        mint_token("", "u1")
