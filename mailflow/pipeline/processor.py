"""Drives the pipeline for stored messages and hands the result to the send queue.

It is woken when an ingress commits a message, and also runs once at start so messages
stored before a crash are expanded.  Expansion happens after the 250, never inside the
SMTP transaction: the sender waits only for the durable commit.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable

from mailflow.clock import Clock
from mailflow.pipeline.expand import plan_deliveries
from mailflow.store.runner import StoreRunner

log = logging.getLogger(__name__)

BATCH = 200
RETRY_AFTER_ERROR = 1.0


class Processor:
    def __init__(self, runner: StoreRunner, clock: Clock, on_queued: Callable[[], None]) -> None:
        self.runner = runner
        self.clock = clock
        self.on_queued = on_queued
        self._wake = asyncio.Event()
        self._wake.set()  # expand whatever a previous run left behind

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        repo = self.runner.repo
        plan = functools.partial(plan_deliveries, repo)
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while True:
                    expanded = await self.runner.write(
                        repo.expand_received, self.clock.now(), BATCH, plan)
                    if not expanded:
                        break
                    log.debug("expanded %d message(s)", len(expanded),
                              extra={"action": "expanded", "count": len(expanded)})
                    self.on_queued()
            except Exception:
                log.exception("expansion failed; retrying", extra={"action": "expand_error"})
                await asyncio.sleep(RETRY_AFTER_ERROR)
                self._wake.set()
