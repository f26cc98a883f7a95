"""The publisher on the standard library alone (``http.client``)."""

from __future__ import annotations

import http.client
import io
import socket
import ssl
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ._errors import AgentwireError, TransportError, error_from_response
from ._retry import OnRetry, RetryPolicy, wait_before_retry
from ._run import Run
from ._wire import (
    PUBLISH_PATH,
    Accepted,
    Event,
    History,
    decode_history,
    decode_results,
    encode,
    split_url,
    with_event_ids,
)
from ._version import USER_AGENT


#: A body larger than this is sent with ``Expect: 100-continue``: the server's 413 for a
#: body over its limit then comes before the body is sent, instead of a connection it
#: cut in the middle of a body it will never read.
EXPECT_CONTINUE_BYTES = 64 * 1024

#: How long to wait for ``100 Continue`` before sending the body anyway (a server or
#: proxy that does not answer it).
CONTINUE_WAIT = 1.0

#: The longest interim response head read while waiting for ``100 Continue``.
_MAX_INTERIM_HEAD = 16 * 1024


class _Prefixed(io.RawIOBase):
    """A socket's byte stream with its first bytes, already read, put back in front."""

    def __init__(self, prefix: bytes, sock: socket.socket) -> None:
        super().__init__()
        self._prefix = prefix
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        return self._sock.recv_into(buffer)


class _ReplaySocket:
    """What ``http.client.HTTPResponse`` reads from: ``sock`` after ``prefix``."""

    def __init__(self, prefix: bytes, sock: socket.socket) -> None:
        self._raw = _Prefixed(prefix, sock)

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(self._raw)


def _read_line(sock: socket.socket, first_wait: float, limit: int) -> Optional[bytes]:
    """One line (with its CRLF) read byte by byte, so nothing after it is consumed;
    ``None`` when no byte came within ``first_wait`` seconds."""
    previous = sock.gettimeout()
    sock.settimeout(first_wait)
    try:
        first = sock.recv(1)
    except socket.timeout:
        return None
    finally:
        sock.settimeout(previous)
    line = first
    while first and not line.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            break
        line += byte
        if len(line) > limit:
            raise TransportError("the server's interim response is too long")
    return line


def _await_continue(
    conn: http.client.HTTPConnection,
) -> Optional[http.client.HTTPResponse]:
    """After the head of an ``Expect: 100-continue`` request: ``None`` to send the body
    (the server said 100, or said nothing in time), or the final answer it sent first."""
    sock = conn.sock
    assert sock is not None
    status_line = _read_line(sock, CONTINUE_WAIT, _MAX_INTERIM_HEAD)
    if status_line is None:
        return None
    parts = status_line.split(None, 2)
    if len(parts) >= 2 and parts[1] == b"100":
        # Skip the interim response's headers, up to its blank line.
        while True:
            line = _read_line(sock, conn.timeout or CONTINUE_WAIT, _MAX_INTERIM_HEAD)
            if line is None or line in (b"\r\n", b"\n", b""):
                return None
    response = http.client.HTTPResponse(_ReplaySocket(status_line, sock), method="POST")  # type: ignore[arg-type]
    response.begin()
    return response


class Transport:
    """One HTTP request per connection, on ``http.client``, with the API key: what the
    sync publisher sends everything through, and the async one its large bodies."""

    def __init__(
        self, url: str, api_key: str, timeout: float, ssl_context: Optional[ssl.SSLContext]
    ) -> None:
        self._scheme, self._host, self._port, self._base = split_url(url)
        if not api_key:
            raise ValueError("an API key is required")
        self._api_key = api_key
        self.timeout = timeout
        self._ssl_context = ssl_context

    def __repr__(self) -> str:
        return f"{self._scheme}://{self._host}:{self._port}{self._base}"

    def _connection(self) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=self._ssl_context
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def send(self, method: str, path: str, body: Optional[bytes]) -> Tuple[int, bytes]:
        """One attempt: the answer's status and body. Raises the typed error of an error
        status, or :class:`TransportError` when no answer came."""
        conn = self._connection()
        try:
            try:
                conn.putrequest(method, self._base + path, skip_accept_encoding=True)
                conn.putheader("Authorization", f"Bearer {self._api_key}")
                conn.putheader("User-Agent", USER_AGENT)
                conn.putheader("Accept", "application/json")
                early = None
                if body is not None:
                    conn.putheader("Content-Type", "application/json")
                    conn.putheader("Content-Length", str(len(body)))
                    if len(body) > EXPECT_CONTINUE_BYTES:
                        conn.putheader("Expect", "100-continue")
                        conn.endheaders()
                        early = _await_continue(conn)
                    else:
                        conn.endheaders()
                    if early is None:
                        try:
                            conn.send(body)
                        except (BrokenPipeError, ConnectionResetError):
                            # The server may have answered and closed before reading
                            # the whole body; whatever it answered may still be there.
                            pass
                else:
                    conn.endheaders()
                response = early if early is not None else conn.getresponse()
                status, answer = response.status, response.read()
                retry_after = response.headers.get("Retry-After")
            except AgentwireError:
                raise
            except (OSError, http.client.HTTPException) as e:
                raise TransportError(f"{method} {path}: {_describe(e)}") from e
        finally:
            conn.close()
        if status >= 400:
            raise error_from_response(status, answer, retry_after)
        return status, answer


class Publisher:
    """Publishes events to an agentwire server over its HTTP API (``POST /v1/events``).

    ``url`` is the server's base URL (``http://127.0.0.1:8080``); ``api_key`` an API key
    of the server, best a publish-only one (``--publish-api-keys``). Every event gets an
    ``event_id`` before its first attempt, and failures that may pass (no answer, 429,
    503) are retried with that same id under ``retry``, waiting at least the server's
    ``Retry-After``. Refusals raise the typed errors of :mod:`agentwire`
    (:class:`InvalidEvent`, :class:`RunViolation`, :class:`PayloadTooLarge`, …), each
    naming the server's ``error`` code, ``message`` and ``field``.

    One connection per request, no shared state: a publisher may be used from many
    threads at once.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retry: Optional[RetryPolicy] = None,
        on_retry: Optional[OnRetry] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
    ) -> None:
        self._transport = Transport(url, api_key, timeout, ssl_context)
        self.retry = retry if retry is not None else RetryPolicy()
        self.on_retry = on_retry

    def __repr__(self) -> str:
        return f"Publisher({self._transport!r})"

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def publish(self, event: Event) -> Accepted:
        """Publishes one event; returns where the server put it.

        Raises:
            ApiError: a subclass naming why the server refused it (after the retries
                for 429 and 503).
            TransportError: no answer, after the retries.
        """
        [prepared] = with_event_ids([event])
        [accepted] = self._publish(encode(prepared), [prepared])
        return accepted

    def publish_many(self, events: Sequence[Event]) -> List[Accepted]:
        """Publishes a batch in one request, all or nothing: the server checks every
        event before it publishes any. Returns one acceptance per event, in order."""
        prepared = with_event_ids(events)
        if not prepared:
            return []
        return self._publish(encode(prepared), prepared)

    def run(
        self,
        user_id: str,
        thread_id: str,
        run_id: Optional[str] = None,
        *,
        agent_name: Optional[str] = None,
    ) -> Run:
        """A run of an agent for ``user_id``: ``with publisher.run(user, thread) as run:``
        publishes ``agent_started``, then ``agent_completed`` at the end of the block, or
        ``agent_error`` when the block raises. See :class:`Run`."""
        return Run(self, user_id, thread_id, run_id, agent_name=agent_name)

    def history(self, user_id: str, after_seq: int = 0, limit: Optional[int] = None) -> History:
        """Reads the user's events after ``after_seq`` (``GET /v1/users/{user}/events``);
        needs a full-access key (a publish-only one gets :class:`Forbidden`)."""
        from urllib.parse import quote, urlencode

        query: Dict[str, int] = {"after_seq": after_seq}
        if limit is not None:
            query["limit"] = limit
        path = f"/v1/users/{quote(user_id, safe='')}/events?{urlencode(query)}"
        return decode_history(self._with_retries("GET", path, None))

    # ---- sending ---------------------------------------------------------------------

    def _publish(self, body: bytes, events: List[Dict[str, Any]]) -> List[Accepted]:
        return decode_results(self._with_retries("POST", PUBLISH_PATH, body), events)

    def _with_retries(self, method: str, path: str, body: Optional[bytes]) -> bytes:
        attempt = 0
        while True:
            attempt += 1
            try:
                _, answer = self._transport.send(method, path, body)
                return answer
            except AgentwireError as e:
                time.sleep(wait_before_retry(self.retry, self.on_retry, attempt, e))


def _describe(e: BaseException) -> str:
    if isinstance(e, socket.timeout):
        return "timed out"
    return str(e) or type(e).__name__
