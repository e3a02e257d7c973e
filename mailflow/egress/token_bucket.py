"""A token bucket that paces sends to a provider's rate (Amazon SES's max send rate).

A caller reserves its tokens at once and then waits out its share of the debt, so
concurrent senders queue in arrival order without a lock and a 50-recipient send at a
rate of 14 per second waits about three and a half seconds instead of never fitting
into a bucket of 14.  The wait is computed, never polled.  The others' debt a caller
would wait behind is bounded (``max_wait``): past it the caller gets ``False`` and sends
nothing, so its delivery is deferred instead of holding a sender for minutes; its own
size never refuses it (a send larger than ``max_wait`` times the rate still goes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class SendPace(Protocol):
    """What paces a provider's sends: this process's :class:`TokenBucket`, or a pace
    every relay of a PostgreSQL store shares (``services/send_pace.py``)."""

    rate: float

    def set_rate(self, rate: float) -> None: ...

    async def take(self, count: float) -> bool: ...

    async def throttled(self) -> None: ...


# (route, rate, max_wait) -> the pace of that route's sends.
PaceFactory = Callable[[str, float, float], SendPace]


class TokenBucket:
    def __init__(self, rate: float, *, burst: float | None = None, max_wait: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.max_wait = max_wait
        self.rate = rate
        self.burst = burst if burst is not None else max(rate, 1.0)
        self._tokens = self.burst
        self._stamp = clock()

    def set_rate(self, rate: float) -> None:
        """A new rate (the account's, once known); the bucket's fill is kept."""
        self._refill()
        self.rate = rate
        self.burst = max(rate, 1.0)
        self._tokens = min(self._tokens, self.burst)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def reserve(self, count: float) -> float | None:
        """Take ``count`` tokens; the seconds to wait before using them, or None (nothing
        taken) when the debt of earlier reservations alone is more than ``max_wait``."""
        self._refill()
        if -self._tokens / self.rate > self.max_wait:
            return None
        wait = max(0.0, (count - self._tokens) / self.rate)
        self._tokens -= count
        return wait

    async def take(self, count: float) -> bool:
        """Wait until ``count`` sends fit the rate; False when that is beyond ``max_wait``."""
        wait = self.reserve(count)
        if wait is None:
            return False
        if wait > 0:
            await asyncio.sleep(wait)
        return True

    async def throttled(self) -> None:
        """The provider said "too fast": every sender waits about a second more."""
        self.reserve(self.rate)
