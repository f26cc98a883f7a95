"""The run helper against a real server: the events of a run, in the order the run
check accepts, also when the block or a tool raises."""

from __future__ import annotations

import pytest

from agentwire import RUN_RAISED, Run

from conftest import types_of


class ToolFailed(Exception):
    pass


def test_a_run_block_publishes_the_whole_run(publisher, history, user) -> None:
    with publisher.run(user, "thread-1", "run-1", agent_name="planner") as run:
        assert isinstance(run, Run)
        run.thinking("Looking for flights.", step=1)
        with run.tool("search_flights", {"to": "LIS"}) as call:
            call.result = {"flights": ["TP 551"]}
        run.custom("progress", {"percent": 50})
        run.result = "TP 551"
    events = history(user).events
    assert types_of(history(user)) == [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "custom",
        "agent_completed",
    ]
    assert all(e["run_id"] == "run-1" and e["thread_id"] == "thread-1" for e in events)
    assert events[0]["data"] == {"agent_name": "planner"}
    assert events[1]["data"] == {"thought": "Looking for flights.", "step": 1}
    executing, completed = events[2]["data"], events[3]["data"]
    assert executing == {"tool_call_id": "tc-1", "tool_name": "search_flights", "arguments": {"to": "LIS"}}
    assert completed["tool_call_id"] == "tc-1" and completed["result"] == {"flights": ["TP 551"]}
    assert completed["is_error"] is False and completed["duration_ms"] >= 0
    assert events[5]["data"]["result"] == "TP 551"
    assert run.finished


def test_a_block_that_raises_ends_the_run_with_agent_error(publisher, history, user) -> None:
    with pytest.raises(ToolFailed):
        with publisher.run(user, "thread-1") as run:
            with run.tool("search", {"q": "x"}):
                raise ToolFailed("the index is down")
    events = history(user).events
    assert types_of(history(user)) == ["agent_started", "tool_executing", "tool_completed", "agent_error"]
    assert events[2]["data"]["is_error"] is True
    assert events[2]["data"]["result"] == "the index is down"
    error = events[3]["data"]
    assert error["code"] == RUN_RAISED and error["retryable"] is False
    assert "ToolFailed" in error["message"]
    assert "index" not in error["message"], "the exception's text stays in the backend"


def test_a_run_ended_in_the_block_is_not_ended_again(publisher, history, user) -> None:
    with publisher.run(user, "thread-1") as run:
        run.fail("The flight search timed out.", code="tool_timeout", retryable=True)
    with publisher.run(user, "thread-1") as second:
        second.complete({"answer": 42})
        second.result = "ignored: the run already ended"
    h = history(user)
    assert types_of(h) == ["agent_started", "agent_error", "agent_started", "agent_completed"]
    assert h.events[1]["data"] == {"message": "The flight search timed out.", "code": "tool_timeout", "retryable": True}
    assert h.events[3]["data"]["result"] == {"answer": 42}
    with pytest.raises(RuntimeError):
        second.complete()


def test_call_tool_and_the_explicit_tool_events(publisher, history, user) -> None:
    with publisher.run(user, "thread-1") as run:
        assert run.call_tool("add", lambda a, b: a + b, a=2, b=3) == 5
        call_id = run.tool_executing("weather", {"city": "Lisbon"}, tool_call_id="w-1")
        run.tool_completed(call_id, "weather", "sunny", duration_ms=95)
    events = history(user).events
    assert [e["data"].get("tool_call_id") for e in events[1:5]] == ["tc-1", "tc-1", "w-1", "w-1"]
    assert events[2]["data"]["result"] == 5
    assert events[4]["data"] == {"tool_call_id": "w-1", "tool_name": "weather", "result": "sunny", "is_error": False, "duration_ms": 95}


def test_stream_message_publishes_each_piece_then_completes(publisher, history, user) -> None:
    with publisher.run(user, "thread-1", "run-s") as run:
        run.result = run.stream_message(iter(["Three ", "", "flights ", "found."]))
    events = history(user).events
    assert types_of(history(user)) == [
        "agent_started",
        "message_delta",
        "message_delta",
        "message_delta",
        "message_completed",
        "agent_completed",
    ]
    assert {e["data"]["message_id"] for e in events[1:5]} == {"msg-1"}
    assert "".join(e["data"]["delta"] for e in events[1:4]) == "Three flights found."
    assert events[5]["data"]["result"] == "Three flights found."
