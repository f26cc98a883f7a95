"""The publisher for asyncio, on httpx (the ``async`` extra: ``pip install
agentwire[async]``)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Dict, List, Optional, Sequence

try:
    import httpx
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "agentwire.AsyncPublisher needs httpx: pip install 'agentwire[async]'"
    ) from e

from ._errors import AgentwireError, TransportError, error_from_response
from ._retry import OnRetry, RetryPolicy, wait_before_retry
from ._run import AsyncRun
from ._sync import EXPECT_CONTINUE_BYTES, Transport
from ._version import USER_AGENT
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


class AsyncPublisher:
    """:class:`Publisher` for asyncio: the same requests, retries and errors, awaited.

    Holds an ``httpx.AsyncClient`` (its connection pool); close it with ``await
    publisher.aclose()`` or use ``async with AsyncPublisher(...) as publisher:``. Pass
    ``client`` to share one of your own (it is then yours to close).

    A body larger than 64 KiB goes out with ``Expect: 100-continue``, so that a server
    refusing its size answers 413 before it is sent: httpx cannot wait for ``100
    Continue``, so such a body is sent by the standard-library transport of
    :class:`Publisher` in a worker thread (with ``ssl_context`` for https).
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retry: Optional[RetryPolicy] = None,
        on_retry: Optional[OnRetry] = None,
        client: Optional[httpx.AsyncClient] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
    ) -> None:
        scheme, host, port, base = split_url(url)
        if not api_key:
            raise ValueError("an API key is required")
        self._base_url = f"{scheme}://{host}:{port}{base}"
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        }
        self.retry = retry if retry is not None else RetryPolicy()
        self.on_retry = on_retry
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=timeout)
        self._timeout = timeout
        self._large_bodies = Transport(url, api_key, timeout, ssl_context)

    def __repr__(self) -> str:
        return f"AsyncPublisher({self._base_url})"

    async def __aenter__(self) -> "AsyncPublisher":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the HTTP client, when this publisher made it."""
        if self._owns_client:
            await self._client.aclose()

    async def publish(self, event: Event) -> Accepted:
        """Publishes one event (see :meth:`Publisher.publish`)."""
        [prepared] = with_event_ids([event])
        [accepted] = await self._publish(encode(prepared), [prepared])
        return accepted

    async def publish_many(self, events: Sequence[Event]) -> List[Accepted]:
        """Publishes a batch, all or nothing (see :meth:`Publisher.publish_many`)."""
        prepared = with_event_ids(events)
        if not prepared:
            return []
        return await self._publish(encode(prepared), prepared)

    def run(
        self,
        user_id: str,
        thread_id: str,
        run_id: Optional[str] = None,
        *,
        agent_name: Optional[str] = None,
    ) -> AsyncRun:
        """A run: ``async with publisher.run(user, thread) as run:`` (see :class:`AsyncRun`)."""
        return AsyncRun(self, user_id, thread_id, run_id, agent_name=agent_name)

    async def history(self, user_id: str, after_seq: int = 0, limit: Optional[int] = None) -> History:
        """Reads the user's events after ``after_seq`` (see :meth:`Publisher.history`)."""
        from urllib.parse import quote

        params: Dict[str, Any] = {"after_seq": after_seq}
        if limit is not None:
            params["limit"] = limit
        path = f"/v1/users/{quote(user_id, safe='')}/events"
        return decode_history(await self._with_retries("GET", path, None, params))

    async def _publish(self, body: bytes, events: List[Dict[str, Any]]) -> List[Accepted]:
        return decode_results(await self._with_retries("POST", PUBLISH_PATH, body, None), events)

    async def _with_retries(
        self, method: str, path: str, body: Optional[bytes], params: Optional[Dict[str, Any]]
    ) -> bytes:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._send(method, path, body, params)
            except AgentwireError as e:
                await asyncio.sleep(wait_before_retry(self.retry, self.on_retry, attempt, e))

    async def _send(
        self, method: str, path: str, body: Optional[bytes], params: Optional[Dict[str, Any]]
    ) -> bytes:
        """One attempt: the answer's body, or the typed error."""
        if body is not None and len(body) > EXPECT_CONTINUE_BYTES and params is None:
            _, answer = await asyncio.to_thread(self._large_bodies.send, method, path, body)
            return answer
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = await self._client.request(
                method,
                self._base_url + path,
                content=body,
                params=params,
                headers=headers,
                timeout=self._timeout,
            )
        except httpx.TransportError as e:
            raise TransportError(f"{method} {path}: {str(e) or type(e).__name__}") from e
        if response.status_code >= 400:
            raise error_from_response(response.status_code, response.content, response.headers.get("Retry-After"))
        return response.content
