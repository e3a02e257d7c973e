"""Gauges about the queue, read from the store when Prometheus scrapes, cached a few
seconds: nothing on the mail path keeps them up to date.

Each scrape costs at most one round of bounded reads (``OperationsStore.pending_counts``
counts at most ``GAUGE_ROW_LIMIT`` rows through the due index; the oldest due time is the
due index too); scrapes within ``ttl`` of the last read reuse its figures, and
concurrent scrapes share one read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mailflow.clock import Clock
from mailflow.store.operations import OperationsStore
from mailflow.store.runner import StoreRunner

DEFAULT_TTL = 5.0  # seconds a read of the store serves scrapes

# Per route: (transactions on the wire, pool size); the scheduler's ``busy_connections``.
BusyConnections = Callable[[], dict[str, tuple[int, int]]]


@dataclass(frozen=True, slots=True)
class _Figures:
    pending: dict[str, int] = field(default_factory=dict)
    next_due: float | None = None
    blobs: tuple[int, int] = (0, 0)
    read_at: float = 0.0  # clock time of the read


class QueueGauges(Collector):
    def __init__(self, runner: StoreRunner, clock: Clock, busy: BusyConnections | None = None,
                 ttl: float = DEFAULT_TTL) -> None:
        self.runner = runner
        self.store = OperationsStore(runner.engines)
        self.clock = clock
        self.busy = busy
        self.ttl = ttl
        self._figures: _Figures | None = None
        self._fresh_until = 0.0  # monotonic
        self._lock = asyncio.Lock()
        # A registry of their own: the relay's registry is a process-wide one, and a
        # process may build more than one relay (tests do).
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    async def refresh(self) -> None:
        """Read the store again unless the last read is younger than ``ttl``."""
        async with self._lock:
            if time.monotonic() < self._fresh_until:
                return
            self._figures = await self.runner.read(self._read)
            self._fresh_until = time.monotonic() + self.ttl

    def _read(self) -> _Figures:
        return _Figures(self.store.pending_counts(), self.store.oldest_due(),
                        self.runner.repo.blob_stats(), self.clock.now())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        figures = self._figures
        if figures is not None:
            deliveries = GaugeMetricFamily(
                "mailflow_deliveries", "Deliveries waiting or in flight, by status",
                labels=["status"])
            for status, count in sorted(figures.pending.items()):
                deliveries.add_metric([status], count)
            yield deliveries
            age = 0.0 if figures.next_due is None else max(figures.read_at - figures.next_due,
                                                           0.0)
            yield GaugeMetricFamily(
                "mailflow_oldest_due_delivery_age_seconds",
                "How long the most overdue delivery (or lease) has been due; 0 if none is",
                value=age)
            count, size = figures.blobs
            yield GaugeMetricFamily("mailflow_blob_store_bytes",
                                    "Bytes of message content stored", value=size)
            yield GaugeMetricFamily("mailflow_blob_store_blobs",
                                    "Distinct message contents stored", value=count)
        if self.busy is not None:
            busy = GaugeMetricFamily("mailflow_egress_connections_busy",
                                     "Transactions on the wire now, by route", labels=["route"])
            pool = GaugeMetricFamily("mailflow_egress_connections",
                                     "Connections a route may use (its pool)", labels=["route"])
            for route, (in_use, size) in sorted(self.busy().items()):
                busy.add_metric([route], in_use)
                pool.add_metric([route], size)
            yield busy
            yield pool
