"""What the tests share: the servers tests/tests/e2e_python_client.rs starts for them
(named in environment variables), publishers for them, and a fresh user per test.

Without those variables the tests that need a server are skipped, saying why; the
others run anywhere.
"""

from __future__ import annotations

import importlib
import os
import uuid
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, List, Tuple

import pytest

from agentwire import AgentwireError, History, Publisher, RetryPolicy

#: Retries that do not slow the tests down (a Retry-After still wins).
FAST_RETRY = RetryPolicy(attempts=5, initial_delay=0.02, max_delay=0.2)


def need_module(name: str) -> ModuleType:
    """Imports ``name``; without it the test is skipped, or fails under CI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        why = f"{name} is not installed (pip install -e 'clients/python[async,test]')"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}: required in CI")
        pytest.skip(why)
        raise


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.skip(f"{name} is not set: tests/tests/e2e_python_client.rs runs these tests against servers it starts")
    return value


@dataclass(frozen=True)
class Server:
    """A running agentwire server."""

    url: str
    #: A publish-only API key (`--publish-api-keys`).
    publish_key: str
    #: A full-access API key (reads history).
    admin_key: str
    #: Its HS256 secret.
    jwt_secret: str


@pytest.fixture
def server() -> Server:
    """A server with the default limits and the run check on."""
    return Server(
        url=_env("AGENTWIRE_URL"),
        publish_key=_env("AGENTWIRE_PUBLISH_KEY"),
        admin_key=_env("AGENTWIRE_ADMIN_KEY"),
        jwt_secret=_env("AGENTWIRE_JWT_SECRET"),
    )


@pytest.fixture
def limited_url() -> str:
    """A server whose publish rate is 2 events per second, bursts of 2 (same keys)."""
    return _env("AGENTWIRE_LIMITED_URL")


@pytest.fixture
def flaky_url() -> str:
    """A server whose broker loses every second answer: the event is accepted, the
    publisher hears 503 (same keys)."""
    return _env("AGENTWIRE_FLAKY_URL")


@pytest.fixture
def user(request: pytest.FixtureRequest) -> str:
    """A user of this test alone."""
    return f"py-{request.node.name[:80]}-{uuid.uuid4().hex[:8]}"


class Retries:
    """An ``on_retry`` that keeps what it was told."""

    def __init__(self) -> None:
        self.calls: List[Tuple[int, AgentwireError, float]] = []

    def __call__(self, attempt: int, error: AgentwireError, delay: float) -> None:
        self.calls.append((attempt, error, delay))


@pytest.fixture
def retries() -> Retries:
    return Retries()


@pytest.fixture
def publisher(server: Server, retries: Retries) -> Publisher:
    """A publisher with the publish-only key."""
    return Publisher(server.url, server.publish_key, retry=FAST_RETRY, on_retry=retries)


@pytest.fixture
def history(server: Server) -> Callable[[str], History]:
    """Reads a user's whole stream with the full-access key."""
    admin = Publisher(server.url, server.admin_key)
    return lambda user: admin.history(user, limit=1000)


def types_of(h: History) -> List[str]:
    return [e["type"] for e in h.events]
