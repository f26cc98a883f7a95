"""The sync publisher against a real server: acceptances, batches, idempotent retries,
Retry-After, and each refusal as its typed error."""

from __future__ import annotations

import base64
import http.client
import os
import socket
from urllib.parse import urlsplit

import pytest

from agentwire import (
    Forbidden,
    InvalidEvent,
    PayloadTooLarge,
    Publisher,
    RateLimited,
    RetryPolicy,
    RunViolation,
    TransportError,
    Unauthorized,
    Unavailable,
    mint_token,
)

from conftest import FAST_RETRY, Server, types_of


def custom(user: str, n: int, **fields: object) -> dict:
    return {"user_id": user, "type": "custom", "data": {"name": "n", "value": n}, **fields}


def started(user: str, run: str, **fields: object) -> dict:
    return {"user_id": user, "type": "agent_started", "thread_id": "t1", "run_id": run, "data": {}, **fields}


def test_publish_answers_where_the_event_went(publisher, history, user) -> None:
    first = publisher.publish(custom(user, 1))
    second = publisher.publish(custom(user, 2))
    assert (first.seq, second.seq) == (1, 2)
    assert first.event_id and first.event_id != second.event_id
    h = history(user)
    assert [(e["seq"], e["event_id"], e["data"]["value"]) for e in h.events] == [
        (1, first.event_id, 1),
        (2, second.event_id, 2),
    ]


def test_a_batch_is_published_in_order(publisher, history, user) -> None:
    run = [
        started(user, "r1"),
        {"user_id": user, "type": "agent_thinking", "thread_id": "t1", "run_id": "r1", "data": {"thought": "hm"}},
        {"user_id": user, "type": "agent_completed", "thread_id": "t1", "run_id": "r1", "data": {"result": 42}},
    ]
    results = publisher.publish_many(run)
    assert [r.seq for r in results] == [1, 2, 3]
    assert types_of(history(user)) == ["agent_started", "agent_thinking", "agent_completed"]
    assert publisher.publish_many([]) == []


def test_an_event_published_again_with_its_id_is_accepted_once(publisher, history, user) -> None:
    event = started(user, "r1", event_id="publisher-chosen-id")
    first = publisher.publish(event)
    # A second agent_started would break the run; the same event_id is recognised first.
    again = publisher.publish(event)
    assert again == first
    assert [e["event_id"] for e in history(user).events] == ["publisher-chosen-id"]


def test_a_bad_field_is_invalid_event_naming_the_field(publisher, retries, user) -> None:
    batch = [
        started(user, "r1"),
        {"user_id": user, "type": "tool_executing", "thread_id": "t1", "run_id": "r1", "data": {"tool_name": "search"}},
    ]
    with pytest.raises(InvalidEvent) as caught:
        publisher.publish_many(batch)
    e = caught.value
    assert (e.status, e.error, e.field) == (422, "invalid_event", "[1].data.tool_call_id")
    assert "tool_call_id" in e.message
    assert retries.calls == [], "a refusal is not retried"


def test_a_broken_run_is_run_violation_naming_the_field(publisher, user) -> None:
    publisher.publish(started(user, "r1"))
    with pytest.raises(RunViolation) as caught:
        publisher.publish(
            {
                "user_id": user,
                "type": "tool_completed",
                "thread_id": "t1",
                "run_id": "r1",
                "data": {"tool_call_id": "never-opened", "tool_name": "search"},
            }
        )
    e = caught.value
    assert (e.status, e.error, e.field) == (409, "run_violation", "data.tool_call_id")


def test_an_unknown_key_is_unauthorized(server: Server, user) -> None:
    with pytest.raises(Unauthorized) as caught:
        Publisher(server.url, "not-a-key").publish(custom(user, 1))
    assert (caught.value.status, caught.value.error) == (401, "unauthorized")


def test_a_publish_only_key_cannot_read_history(publisher, user) -> None:
    with pytest.raises(Forbidden) as caught:
        publisher.history(user)
    assert caught.value.status == 403


def test_a_body_over_the_server_limit_is_413_at_once(publisher, retries, user) -> None:
    # 30 events of 200 KiB: each under the event limit (256 KiB), together over the
    # body limit (4 MiB). The server refuses them from Content-Length, before reading:
    # the publisher sees the 413, not a connection cut while it was still sending.
    big = "x" * (200 * 1024)
    batch = [{"user_id": user, "type": "custom", "data": {"name": "blob", "value": big}} for _ in range(30)]
    with pytest.raises(PayloadTooLarge) as caught:
        publisher.publish_many(batch)
    e = caught.value
    assert (e.status, e.error, e.field) == (413, "payload_too_large", None)
    assert "4194304" in e.message
    assert retries.calls == [], "not retried"


def test_an_event_over_the_event_limit_is_413_naming_it(publisher, user) -> None:
    batch = [custom(user, 1), {"user_id": user, "type": "custom", "data": {"name": "blob", "value": "x" * (300 * 1024)}}]
    with pytest.raises(PayloadTooLarge) as caught:
        publisher.publish_many(batch)
    assert caught.value.field == "[1]"


def test_no_server_is_a_transport_error_after_the_retries(retries, user) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on `port` any more.
    publisher = Publisher(f"http://127.0.0.1:{port}", "k", retry=RetryPolicy(attempts=3, initial_delay=0.01), on_retry=retries)
    with pytest.raises(TransportError):
        publisher.publish(custom(user, 1))
    assert [attempt for attempt, _, _ in retries.calls] == [1, 2]


def test_rate_limited_publishes_wait_for_retry_after_and_all_arrive(server: Server, limited_url, retries, user) -> None:
    publisher = Publisher(limited_url, server.publish_key, retry=FAST_RETRY, on_retry=retries)
    accepted = [publisher.publish(custom(user, n)) for n in range(5)]
    assert [a.seq for a in accepted] == [1, 2, 3, 4, 5]
    limited = [(error, delay) for _, error, delay in retries.calls]
    assert limited, "the rate limit was never reached"
    for error, delay in limited:
        assert isinstance(error, RateLimited)
        assert error.retry_after is not None and error.retry_after >= 1
        assert delay >= error.retry_after, "waited less than Retry-After"


def test_a_retry_after_too_long_to_wait_is_raised(server: Server, limited_url, user) -> None:
    publisher = Publisher(limited_url, server.publish_key, retry=RetryPolicy(max_retry_after=0.5))
    with pytest.raises(RateLimited) as caught:
        for n in range(5):
            publisher.publish(custom(user, n))
    assert caught.value.retry_after is not None and caught.value.retry_after >= 1


def test_lost_answers_are_retried_with_the_same_ids(server: Server, flaky_url, retries, user) -> None:
    publisher = Publisher(flaky_url, server.publish_key, retry=FAST_RETRY, on_retry=retries)
    run = [
        started(user, "r1"),
        {"user_id": user, "type": "agent_thinking", "thread_id": "t1", "run_id": "r1", "data": {"thought": "a"}},
        {"user_id": user, "type": "agent_completed", "thread_id": "t1", "run_id": "r1", "data": {"result": 1}},
    ]
    results = [publisher.publish(e) for e in run]
    assert [r.seq for r in results] == [1, 2, 3], "each event once, though some answers were lost"
    assert any(isinstance(e, Unavailable) and e.retry_after is not None for _, e, _ in retries.calls)
    admin = Publisher(flaky_url, server.admin_key, retry=FAST_RETRY)
    assert [e["seq"] for e in admin.history(user).events] == [1, 2, 3]


def _handshake(url: str, token: str) -> int:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(
            "GET",
            "/ws",
            headers={
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
                "Authorization": f"Bearer {token}",
            },
        )
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_minted_token_opens_a_websocket(server: Server, user) -> None:
    assert _handshake(server.url, mint_token(server.jwt_secret, user)) == 101
    assert _handshake(server.url, mint_token("another secret", user)) == 401
