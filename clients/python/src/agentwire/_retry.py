"""When a failed request is sent again, and after how long."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Callable, Optional

from ._errors import AgentwireError

log = logging.getLogger("agentwire")

#: Called before each retry with the attempt that failed (from 1), its error, and the
#: seconds until the next attempt.
OnRetry = Callable[[int, AgentwireError, float], None]


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of a request that failed in a way that may pass: no answer (a lost
    connection, a timeout), 429 or 503.

    Every attempt sends the same body with the same ``event_id``\\ s, so a retry never
    publishes an event twice. The wait grows exponentially with jitter, and is never
    shorter than the server's ``Retry-After``.
    """

    #: Attempts in all, the first included (1: no retry).
    attempts: int = 5
    #: Wait before the second attempt, in seconds (before jitter).
    initial_delay: float = 0.25
    #: Longest wait between attempts, in seconds (a longer ``Retry-After`` still wins).
    max_delay: float = 10.0
    #: Growth of the wait per attempt.
    multiplier: float = 2.0
    #: Fraction of the wait taken off at random (0..1), so that many publishers that
    #: failed together do not all return together.
    jitter: float = 0.5
    #: A ``Retry-After`` longer than this (seconds) is not waited for: the error is
    #: raised at once, carrying ``retry_after``.
    max_retry_after: float = 60.0

    def delay(self, attempt: int, error: AgentwireError) -> Optional[float]:
        """Seconds to wait before attempt ``attempt + 1`` after ``error`` ended attempt
        ``attempt`` (counted from 1), or ``None`` when the error is final."""
        if not error.retryable or attempt >= self.attempts:
            return None
        backoff = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        backoff *= 1.0 - min(1.0, max(0.0, self.jitter)) * random.random()
        retry_after = getattr(error, "retry_after", None)
        if retry_after is None:
            return backoff
        if retry_after > self.max_retry_after:
            return None
        return max(float(retry_after), backoff)


def wait_before_retry(
    policy: RetryPolicy, on_retry: Optional[OnRetry], attempt: int, error: AgentwireError
) -> float:
    """What a publisher does when ``attempt`` failed with ``error``: raises ``error`` when
    it is final; else logs the retry, tells ``on_retry``, and returns the seconds to wait."""
    delay = policy.delay(attempt, error)
    if delay is None:
        raise error
    log.warning("agentwire: attempt %d failed (%s); retrying in %.2fs", attempt, error, delay)
    if on_retry is not None:
        on_retry(attempt, error, delay)
    return delay


#: No retries: every failure is raised at once.
NO_RETRY = RetryPolicy(attempts=1)
