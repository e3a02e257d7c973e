"""Lanes: a ready queue per egress provider, and how much waiting work each may hold.

With routes (:mod:`mailflow.egress.routes`) the egress is several providers; the scheduler
serves each from its own :class:`Lane` (its own ready queue and senders), so one slow or
dead provider never holds up another.  The claim is not per lane (the store leases due
deliveries in priority order, whatever their domain), so a lane must decide what to do
with work a claim brings while it is already busy.  It keeps a backlog bounded in
*time*: it takes more while what waits would be on the wire within ``backlog_seconds``
at the pace its transactions are taking (the slowest one in flight counts, so a hanging
next hop is known to be slow long before its first timeout), and never more than
``MAX_BACKLOG`` transactions.  A healthy busy lane thus keeps plenty queued, while a
hanging one holds little beyond its low-water mark and its leases do not run out in
memory.  What a lane does not take is handed back to the store by the scheduler.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar, runtime_checkable

from mailflow.model import Egress

T = TypeVar("T")  # what waits in the ready queue (the scheduler's transactions)

MAX_BACKLOG = 1000       # transactions a lane holds at most, however fast it is
SMOOTHING = 0.2          # weight of the latest transaction in the running mean


class EgressLane(Protocol):
    """One provider of a routed egress and how many transactions it may have in flight."""

    @property
    def name(self) -> str: ...

    @property
    def egress(self) -> Egress: ...

    @property
    def concurrency(self) -> int: ...


@runtime_checkable
class RoutedEgress(Protocol):
    """An egress made of lanes (:class:`mailflow.egress.routes.RoutedEgress`): lane 0 is
    the default, ``lane_of`` says which lane a recipient's domain is routed to."""

    @property
    def lanes(self) -> Sequence[EgressLane]: ...

    def lane_of(self, recipient: str) -> int: ...


class Lane(Generic[T]):
    """A ready queue, the provider its senders use, and the pace of its transactions.

    ``None`` in the queue tells a sender to stop.
    """

    __slots__ = ("_sending", "_tokens", "backlog_seconds", "concurrency", "egress",
                 "low_water", "name", "ready", "tx_seconds")

    def __init__(self, name: str, egress: Egress, concurrency: int,
                 backlog_seconds: float = 30.0) -> None:
        self.name = name
        self.egress = egress
        self.concurrency = concurrency
        self.ready: asyncio.Queue[T | None] = asyncio.Queue()
        self.low_water = concurrency * 2  # fewer waiting: the keeper claims for this lane
        self.backlog_seconds = backlog_seconds
        self.tx_seconds = 0.0  # running mean of a transaction's time on the wire
        self._sending: dict[int, float] = {}  # transactions in flight: token -> start
        self._tokens = itertools.count()

    @property
    def has_room(self) -> bool:
        return self.ready.qsize() < self.low_water

    def started(self, now: float) -> int:
        token = next(self._tokens)
        self._sending[token] = now
        return token

    def finished(self, token: int, now: float) -> None:
        took = now - self._sending.pop(token, now)
        self.tx_seconds += SMOOTHING * (took - self.tx_seconds)

    def drain_seconds(self, now: float) -> float:
        """About how long until what waits here now is on the wire."""
        slowest = max((now - start for start in self._sending.values()), default=0.0)
        return self.ready.qsize() * max(self.tx_seconds, slowest) / self.concurrency

    def takes_more(self, now: float) -> bool:
        """Whether a lane without room still queues more claimed work."""
        return (self.ready.qsize() < MAX_BACKLOG
                and self.drain_seconds(now) < self.backlog_seconds)
