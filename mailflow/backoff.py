"""Retry schedule for deferred deliveries: exponential, capped, with a maximum age."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial_delay: float = 60.0
    multiplier: float = 2.0
    max_delay: float = 4 * 3600.0
    max_age: float = 5 * 24 * 3600.0

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (1-based)."""
        exponent = max(attempts - 1, 0)
        return min(self.max_delay, self.initial_delay * self.multiplier ** min(exponent, 64))

    def expired(self, first_queued_at: float, now: float) -> bool:
        """Whether a delivery queued at ``first_queued_at`` has run out of time."""
        return now - first_queued_at >= self.max_age
