"""The run helper: one agent run's events, in the order the server's run check wants
(``agent_started`` first, tools opened before they complete, a streamed message's
``message_delta`` pieces before its ``message_completed``, exactly one of
``agent_completed`` / ``agent_error`` last)."""

from __future__ import annotations

import logging
import time
import uuid
from types import TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncIterable,
    Awaitable,
    Callable,
    Dict,
    Iterable,
    Optional,
    Tuple,
    Type,
    TypeVar,
    Union,
)

from ._errors import AgentwireError
from ._wire import Accepted, new_event_id

if TYPE_CHECKING:
    from ._async import AsyncPublisher
    from ._sync import Publisher

log = logging.getLogger("agentwire")

T = TypeVar("T")

#: ``agent_error`` code of a run whose block raised an exception.
RUN_RAISED = "run_raised"
#: ``agent_error`` code of a run whose block was cancelled or interrupted (a cancelled
#: task, ``KeyboardInterrupt``, ``SystemExit``).
RUN_DROPPED = "run_dropped"


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


def _ending_of(exc_type: Type[BaseException]) -> Tuple[str, str]:
    """The ``agent_error`` code and message for a block that raised ``exc_type``. The
    exception's text is not sent: it goes to the user's browser, and may hold what only
    the backend should see. Call ``run.fail(...)`` for a message of your own."""
    if issubclass(exc_type, Exception):
        return RUN_RAISED, f"the agent run failed ({exc_type.__name__})"
    return RUN_DROPPED, "the agent run was cancelled before it finished"


class _RunEvents:
    """The events of one run, built in order; what :class:`Run` and :class:`AsyncRun`
    share. Builds dicts and tracks the run's state; sends nothing."""

    def __init__(
        self, user_id: str, thread_id: str, run_id: Optional[str], agent_name: Optional[str]
    ) -> None:
        self.user_id = user_id
        self.thread_id = thread_id
        self.run_id = run_id or f"run-{uuid.uuid4().hex}"
        self.agent_name = agent_name
        #: Published with ``agent_completed`` when the block ends without an exception.
        self.result: Any = None
        self._started: Optional[float] = None
        self._finished = False
        self._tool_calls = 0
        self._messages = 0

    @property
    def started(self) -> bool:
        """Whether ``agent_started`` was published."""
        return self._started is not None

    @property
    def finished(self) -> bool:
        """Whether ``agent_completed`` or ``agent_error`` was published."""
        return self._finished

    def _event(self, type_: str, data: Dict[str, Any]) -> Dict[str, Any]:
        return {
            "user_id": self.user_id,
            "type": type_,
            "thread_id": self.thread_id,
            "run_id": self.run_id,
            "event_id": new_event_id(),
            "data": data,
        }

    def _start_event(self) -> Dict[str, Any]:
        if self.started:
            raise RuntimeError(f"run {self.run_id} was already started")
        data: Dict[str, Any] = {}
        if self.agent_name is not None:
            data["agent_name"] = self.agent_name
        return self._event("agent_started", data)

    def _mark_started(self) -> None:
        self._started = time.monotonic()

    def _thinking_event(self, thought: str, step: Optional[int], extra: Dict[str, Any]) -> Dict[str, Any]:
        data: Dict[str, Any] = dict(extra, thought=thought)
        if step is not None:
            data["step"] = step
        return self._event("agent_thinking", data)

    def _tool_executing_event(
        self, name: str, arguments: Any, tool_call_id: Optional[str]
    ) -> Tuple[Dict[str, Any], str]:
        self._tool_calls += 1
        call_id = tool_call_id or f"tc-{self._tool_calls}"
        data = {
            "tool_call_id": call_id,
            "tool_name": name,
            "arguments": {} if arguments is None else arguments,
        }
        return self._event("tool_executing", data), call_id

    def _tool_completed_event(
        self, tool_call_id: str, name: str, result: Any, is_error: bool, duration_ms: Optional[int]
    ) -> Dict[str, Any]:
        data: Dict[str, Any] = {
            "tool_call_id": tool_call_id,
            "tool_name": name,
            "result": result,
            "is_error": is_error,
        }
        if duration_ms is not None:
            data["duration_ms"] = duration_ms
        return self._event("tool_completed", data)

    def _message_id(self, message_id: Optional[str]) -> str:
        self._messages += 1
        return message_id or f"msg-{self._messages}"

    def _delta_event(self, message_id: str, delta: str) -> Dict[str, Any]:
        return self._event("message_delta", {"message_id": message_id, "delta": delta})

    def _message_completed_event(self, message_id: str, text: Optional[str]) -> Dict[str, Any]:
        data: Dict[str, Any] = {"message_id": message_id}
        if text is not None:
            data["text"] = text
        return self._event("message_completed", data)

    def _custom_event(self, name: str, value: Any) -> Dict[str, Any]:
        return self._event("custom", {"name": name, "value": value})

    def _completed_event(self, result: Any) -> Dict[str, Any]:
        data: Dict[str, Any] = {"result": result}
        if self._started is not None:
            data["duration_ms"] = _ms(time.monotonic() - self._started)
        return self._event("agent_completed", data)

    def _error_event(self, message: str, code: Optional[str], retryable: bool) -> Dict[str, Any]:
        data: Dict[str, Any] = {"message": message, "retryable": retryable}
        if code is not None:
            data["code"] = code
        return self._event("agent_error", data)

    def _ending(self) -> None:
        if self._finished:
            raise RuntimeError(f"run {self.run_id} has already ended")
        self._finished = True

    def _unreported(self, e: AgentwireError) -> None:
        # The block's exception matters more; this one is only logged.
        log.error("agentwire: run %s raised, and its agent_error was not published: %s", self.run_id, e)


class Run(_RunEvents):
    """One agent run of a user, published as it happens::

        with publisher.run("alice", "thread-1", agent_name="planner") as run:
            run.thinking("Looking for flights.")
            with run.tool("search_flights", {"to": "LIS"}) as call:
                call.result = search_flights(to="LIS")
            run.result = "TP 551, 129 EUR"

    Entering the block publishes ``agent_started``; leaving it publishes
    ``agent_completed`` with ``run.result``, unless the run already ended
    (:meth:`complete`, :meth:`fail`). When the block raises, the run ends with
    ``agent_error`` (code ``run_raised``; ``run_dropped`` for ``KeyboardInterrupt`` and
    the like) and the exception goes on. Every event carries its own ``event_id``, so
    the publisher's retries never duplicate one.
    """

    def __init__(
        self,
        publisher: "Publisher",
        user_id: str,
        thread_id: str,
        run_id: Optional[str] = None,
        *,
        agent_name: Optional[str] = None,
    ) -> None:
        super().__init__(user_id, thread_id, run_id, agent_name)
        self._publisher = publisher

    def __repr__(self) -> str:
        return f"Run(user_id={self.user_id!r}, run_id={self.run_id!r})"

    def start(self) -> Accepted:
        """Publishes ``agent_started`` (entering the ``with`` block does)."""
        accepted = self._publisher.publish(self._start_event())
        self._mark_started()
        return accepted

    def thinking(self, thought: str, *, step: Optional[int] = None, **extra: Any) -> Accepted:
        """Publishes ``agent_thinking``; ``extra`` keyword arguments go into ``data``."""
        return self._publisher.publish(self._thinking_event(thought, step, extra))

    def tool(self, name: str, arguments: Any = None, *, tool_call_id: Optional[str] = None) -> "ToolCall":
        """A tool call as a ``with`` block: ``tool_executing`` on entry,
        ``tool_completed`` with ``call.result`` on exit — or, when the block raises, with
        the exception's text and ``is_error`` (the exception goes on)."""
        return ToolCall(self, name, arguments, tool_call_id)

    def call_tool(self, name: str, function: Callable[..., T], /, **arguments: Any) -> T:
        """Runs ``function(**arguments)`` as the tool call ``name``, reported as
        :meth:`tool` does; returns what it returned."""
        with self.tool(name, arguments) as call:
            call.result = function(**arguments)
        return call.result  # type: ignore[no-any-return]

    def tool_executing(self, name: str, arguments: Any = None, *, tool_call_id: Optional[str] = None) -> str:
        """Publishes ``tool_executing``; returns the ``tool_call_id`` (``tc-1``, ``tc-2``, …
        unless given) to pass to :meth:`tool_completed`."""
        event, call_id = self._tool_executing_event(name, arguments, tool_call_id)
        self._publisher.publish(event)
        return call_id

    def tool_completed(
        self,
        tool_call_id: str,
        name: str,
        result: Any = None,
        *,
        is_error: bool = False,
        duration_ms: Optional[int] = None,
    ) -> Accepted:
        """Publishes ``tool_completed`` for a call :meth:`tool_executing` opened."""
        return self._publisher.publish(
            self._tool_completed_event(tool_call_id, name, result, is_error, duration_ms)
        )

    def message_delta(self, message_id: str, delta: str) -> Accepted:
        """Publishes ``message_delta``: the next piece of the streamed message
        ``message_id`` (its first piece opens the message)."""
        return self._publisher.publish(self._delta_event(message_id, delta))

    def message_completed(self, message_id: str, text: Optional[str] = None) -> Accepted:
        """Publishes ``message_completed`` for a message :meth:`message_delta` opened;
        ``text``, when given, is the whole message again."""
        return self._publisher.publish(self._message_completed_event(message_id, text))

    def stream_message(self, pieces: Iterable[str], *, message_id: Optional[str] = None) -> str:
        """Streams an answer as the model writes it: each non-empty piece of ``pieces``
        (a token stream, say) as a ``message_delta`` of one message (``msg-1``,
        ``msg-2``, … unless given), then ``message_completed``. Returns the whole text,
        for ``run.result`` if the run's result should carry it too::

            run.result = run.stream_message(chunk.text for chunk in model.stream(prompt))
        """
        mid = self._message_id(message_id)
        text = []
        for piece in pieces:
            if piece:
                self.message_delta(mid, piece)
                text.append(piece)
        if not text:
            self.message_delta(mid, "")
        self.message_completed(mid)
        return "".join(text)

    def custom(self, name: str, value: Any = None) -> Accepted:
        """Publishes a ``custom`` event (progress, notifications) in this run."""
        return self._publisher.publish(self._custom_event(name, value))

    def complete(self, result: Any = None) -> Accepted:
        """Ends the run with ``agent_completed``."""
        event = self._completed_event(result)
        self._ending()
        return self._publisher.publish(event)

    def fail(self, message: str, *, code: Optional[str] = None, retryable: bool = False) -> Accepted:
        """Ends the run with ``agent_error``; ``message`` is shown to the user."""
        event = self._error_event(message, code, retryable)
        self._ending()
        return self._publisher.publish(event)

    def __enter__(self) -> "Run":
        self.start()
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self.finished:
            return None
        if exc_type is None:
            self.complete(self.result)
            return None
        code, message = _ending_of(exc_type)
        try:
            self.fail(message, code=code)
        except AgentwireError as e:
            self._unreported(e)
        return None


class _ToolCallState:
    """What :class:`ToolCall` and :class:`AsyncToolCall` share: the call, its result,
    and what ``tool_completed`` says at the end of the block."""

    def __init__(self, name: str, arguments: Any, tool_call_id: Optional[str]) -> None:
        self.name = name
        self.arguments = arguments
        #: ``tc-1``, ``tc-2``, … unless given; known once the block is entered.
        self.tool_call_id = tool_call_id
        #: Published with ``tool_completed``.
        self.result: Any = None
        self._started = 0.0

    def _opened(self, tool_call_id: str) -> None:
        self.tool_call_id = tool_call_id
        self._started = time.monotonic()

    def _outcome(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException]
    ) -> Tuple[str, Any, bool, int]:
        """``(tool_call_id, result, is_error, duration_ms)`` for ``tool_completed``: the
        result, or the text of the exception that ended the block."""
        assert self.tool_call_id is not None
        duration = _ms(time.monotonic() - self._started)
        if exc_type is None:
            return self.tool_call_id, self.result, False, duration
        return self.tool_call_id, str(exc) or exc_type.__name__, True, duration


def _unreported(name: str, e: AgentwireError) -> None:
    # The block's exception matters more; this one is only logged.
    log.error("agentwire: tool %s raised, and its tool_completed was not published: %s", name, e)


class ToolCall(_ToolCallState):
    """A tool call of a :class:`Run`, as a ``with`` block; set :attr:`result`."""

    def __init__(self, run: Run, name: str, arguments: Any, tool_call_id: Optional[str]) -> None:
        super().__init__(name, arguments, tool_call_id)
        self.run = run

    def __enter__(self) -> "ToolCall":
        self._opened(self.run.tool_executing(self.name, self.arguments, tool_call_id=self.tool_call_id))
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        call_id, result, is_error, duration = self._outcome(exc_type, exc)
        try:
            self.run.tool_completed(call_id, self.name, result, is_error=is_error, duration_ms=duration)
        except AgentwireError as e:
            if not is_error:
                raise
            _unreported(self.name, e)
        return None


class AsyncRun(_RunEvents):
    """:class:`Run` for :class:`AsyncPublisher`: ``async with publisher.run(user, thread)
    as run:``, ``await run.thinking(...)``, ``async with run.tool(...) as call:``."""

    def __init__(
        self,
        publisher: "AsyncPublisher",
        user_id: str,
        thread_id: str,
        run_id: Optional[str] = None,
        *,
        agent_name: Optional[str] = None,
    ) -> None:
        super().__init__(user_id, thread_id, run_id, agent_name)
        self._publisher = publisher

    def __repr__(self) -> str:
        return f"AsyncRun(user_id={self.user_id!r}, run_id={self.run_id!r})"

    async def start(self) -> Accepted:
        """Publishes ``agent_started`` (entering the ``async with`` block does)."""
        accepted = await self._publisher.publish(self._start_event())
        self._mark_started()
        return accepted

    async def thinking(self, thought: str, *, step: Optional[int] = None, **extra: Any) -> Accepted:
        """Publishes ``agent_thinking``."""
        return await self._publisher.publish(self._thinking_event(thought, step, extra))

    def tool(self, name: str, arguments: Any = None, *, tool_call_id: Optional[str] = None) -> "AsyncToolCall":
        """A tool call as an ``async with`` block (see :meth:`Run.tool`)."""
        return AsyncToolCall(self, name, arguments, tool_call_id)

    async def call_tool(self, name: str, function: Callable[..., Awaitable[T]], /, **arguments: Any) -> T:
        """Awaits ``function(**arguments)`` as the tool call ``name``; returns its value."""
        async with self.tool(name, arguments) as call:
            call.result = await function(**arguments)
        return call.result  # type: ignore[no-any-return]

    async def tool_executing(self, name: str, arguments: Any = None, *, tool_call_id: Optional[str] = None) -> str:
        """Publishes ``tool_executing``; returns the ``tool_call_id``."""
        event, call_id = self._tool_executing_event(name, arguments, tool_call_id)
        await self._publisher.publish(event)
        return call_id

    async def tool_completed(
        self,
        tool_call_id: str,
        name: str,
        result: Any = None,
        *,
        is_error: bool = False,
        duration_ms: Optional[int] = None,
    ) -> Accepted:
        """Publishes ``tool_completed``."""
        return await self._publisher.publish(
            self._tool_completed_event(tool_call_id, name, result, is_error, duration_ms)
        )

    async def message_delta(self, message_id: str, delta: str) -> Accepted:
        """Publishes ``message_delta`` (see :meth:`Run.message_delta`)."""
        return await self._publisher.publish(self._delta_event(message_id, delta))

    async def message_completed(self, message_id: str, text: Optional[str] = None) -> Accepted:
        """Publishes ``message_completed`` (see :meth:`Run.message_completed`)."""
        return await self._publisher.publish(self._message_completed_event(message_id, text))

    async def stream_message(
        self,
        pieces: Union[AsyncIterable[str], Iterable[str]],
        *,
        message_id: Optional[str] = None,
    ) -> str:
        """Streams an answer from an async (or plain) iterable of text pieces, as
        :meth:`Run.stream_message` does; returns the whole text."""
        mid = self._message_id(message_id)
        text = []

        async def each() -> Any:
            if hasattr(pieces, "__aiter__"):
                async for piece in pieces:  # type: ignore[union-attr]
                    yield piece
            else:
                for piece in pieces:  # type: ignore[union-attr]
                    yield piece

        async for piece in each():
            if piece:
                await self.message_delta(mid, piece)
                text.append(piece)
        if not text:
            await self.message_delta(mid, "")
        await self.message_completed(mid)
        return "".join(text)

    async def custom(self, name: str, value: Any = None) -> Accepted:
        """Publishes a ``custom`` event in this run."""
        return await self._publisher.publish(self._custom_event(name, value))

    async def complete(self, result: Any = None) -> Accepted:
        """Ends the run with ``agent_completed``."""
        event = self._completed_event(result)
        self._ending()
        return await self._publisher.publish(event)

    async def fail(self, message: str, *, code: Optional[str] = None, retryable: bool = False) -> Accepted:
        """Ends the run with ``agent_error``."""
        event = self._error_event(message, code, retryable)
        self._ending()
        return await self._publisher.publish(event)

    async def __aenter__(self) -> "AsyncRun":
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self.finished:
            return None
        if exc_type is None:
            await self.complete(self.result)
            return None
        code, message = _ending_of(exc_type)
        try:
            await self.fail(message, code=code)
        except AgentwireError as e:
            self._unreported(e)
        return None


class AsyncToolCall(_ToolCallState):
    """A tool call of an :class:`AsyncRun`, as an ``async with`` block."""

    def __init__(self, run: AsyncRun, name: str, arguments: Any, tool_call_id: Optional[str]) -> None:
        super().__init__(name, arguments, tool_call_id)
        self.run = run

    async def __aenter__(self) -> "AsyncToolCall":
        self._opened(await self.run.tool_executing(self.name, self.arguments, tool_call_id=self.tool_call_id))
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        call_id, result, is_error, duration = self._outcome(exc_type, exc)
        try:
            await self.run.tool_completed(call_id, self.name, result, is_error=is_error, duration_ms=duration)
        except AgentwireError as e:
            if not is_error:
                raise
            _unreported(self.name, e)
        return None
