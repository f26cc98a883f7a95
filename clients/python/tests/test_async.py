"""The async publisher (httpx) against a real server: the same answers, errors and
retries as the sync one."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, TypeVar

import pytest

from conftest import FAST_RETRY, need_module, types_of

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


@pytest.fixture
def agentwire_async() -> Any:
    need_module("httpx")
    import agentwire

    return agentwire


def test_publish_and_a_batch(agentwire_async, server, history, user) -> None:
    async def go() -> None:
        async with agentwire_async.AsyncPublisher(server.url, server.publish_key, retry=FAST_RETRY) as p:
            one = await p.publish({"user_id": user, "type": "custom", "data": {"name": "n", "value": 1}})
            more = await p.publish_many(
                [{"user_id": user, "type": "custom", "data": {"name": "n", "value": n}} for n in (2, 3)]
            )
            assert [one.seq] + [m.seq for m in more] == [1, 2, 3]
            with pytest.raises(agentwire_async.Forbidden):
                await p.history(user)

    run(go())
    assert [e["data"]["value"] for e in history(user).events] == [1, 2, 3]


def test_the_run_helper_ends_a_raising_block_with_agent_error(agentwire_async, server, history, user) -> None:
    async def go() -> None:
        async with agentwire_async.AsyncPublisher(server.url, server.publish_key) as p:
            async with p.run(user, "thread-1", agent_name="async") as r:
                await r.thinking("one")

                async def double(x: int) -> int:
                    return 2 * x

                assert await r.call_tool("double", double, x=21) == 42
                r.result = 42
            with pytest.raises(ZeroDivisionError):
                async with p.run(user, "thread-1") as r:
                    async with r.tool("divide", {"by": 0}):
                        1 / 0  # noqa: B018

    run(go())
    h = history(user)
    assert types_of(h) == [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_completed",
        "agent_started",
        "tool_executing",
        "tool_completed",
        "agent_error",
    ]
    assert h.events[4]["data"]["result"] == 42
    assert h.events[7]["data"]["is_error"] is True
    assert h.events[8]["data"]["code"] == agentwire_async.RUN_RAISED


def test_typed_refusals_and_a_body_over_the_limit(agentwire_async, server, user) -> None:
    async def go() -> None:
        async with agentwire_async.AsyncPublisher(server.url, server.publish_key, retry=FAST_RETRY) as p:
            with pytest.raises(agentwire_async.InvalidEvent) as invalid:
                await p.publish({"user_id": user, "type": "agent_thinking", "thread_id": "t", "run_id": "r", "data": {}})
            assert invalid.value.field == "data.thought"
            big = "x" * (200 * 1024)
            with pytest.raises(agentwire_async.PayloadTooLarge) as too_large:
                await p.publish_many(
                    [{"user_id": user, "type": "custom", "data": {"name": "b", "value": big}} for _ in range(30)]
                )
            assert too_large.value.status == 413

    run(go())


def test_rate_limited_and_lost_answers_are_retried(agentwire_async, server, limited_url, flaky_url, retries, user) -> None:
    async def go() -> None:
        for url in (limited_url, flaky_url):
            async with agentwire_async.AsyncPublisher(url, server.publish_key, retry=FAST_RETRY, on_retry=retries) as p:
                seqs = [
                    (await p.publish({"user_id": user, "type": "custom", "data": {"name": "n", "value": n}})).seq
                    for n in range(4)
                ]
                assert seqs == [1, 2, 3, 4]

    run(go())
    kinds = {type(e).__name__ for _, e, _ in retries.calls}
    assert kinds == {"RateLimited", "Unavailable"}
    assert all(delay >= (e.retry_after or 0) for _, e, delay in retries.calls)
