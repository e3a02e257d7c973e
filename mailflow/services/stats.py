"""Queue statistics for the dashboard: deliveries by status, and messages received,
delivered and failed per hour (``GET /api/v1/stats``; the web UI's chart calls
:meth:`StatsService.deliveries_per_hour` too, so both show the same figures)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from mailflow.clock import Clock
from mailflow.errors import InvalidInput
from mailflow.store.operations import OperationsStore

HOUR: Final = 3600.0
MAX_HOURS: Final = 24 * 7
# How long after its message's arrival a delivery may still finish: the default
# ``max_delivery_age`` (five days) and a day's slack; it bounds the scan by queue id.
DELIVERY_HORIZON: Final = 6 * 24 * HOUR


@dataclass(frozen=True, slots=True)
class HourCounts:
    """One hour of traffic, from ``start`` (seconds since the epoch, on the hour)."""

    start: float
    received: int   # messages accepted
    delivered: int  # deliveries that reached the recipient's server
    failed: int     # deliveries that failed permanently


class StatsService:
    def __init__(self, store: OperationsStore, clock: Clock,
                 horizon: float = DELIVERY_HORIZON) -> None:
        self.store = store
        self.clock = clock
        self.horizon = horizon

    def deliveries_per_hour(self, hours: int = 24) -> list[HourCounts]:
        """The last ``hours`` whole hours and the current one, oldest first."""
        if not 1 <= hours <= MAX_HOURS:
            raise InvalidInput(f"invalid hours {hours}: between 1 and {MAX_HOURS}")
        now = self.clock.now()
        since = (now // HOUR - hours + 1) * HOUR
        rows = self.store.hourly_counts(since, since - self.horizon, hours)
        return [HourCounts(since + i * HOUR, *counts) for i, counts in enumerate(rows)]
