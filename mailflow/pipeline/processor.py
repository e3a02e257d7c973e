"""Drives the pipeline for stored messages and hands the result to the send queue.

Small posts are expanded inside the ingest transaction itself (see
:meth:`Repository.store_messages`); this loop takes the rest: posts to large lists, whose
expansion must not delay the 250, and whatever a crash left ``received``.  It is woken
when an ingest leaves such messages, and runs once at start.
"""

from __future__ import annotations

import asyncio
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
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while True:
                    expanded = await self.runner.write(
                        repo.expand_received, self.clock.now(), BATCH, plan_deliveries)
                    if not expanded:
                        break
                    log.debug("expanded %d message(s)", expanded,
                              extra={"action": "expanded", "count": expanded})
                    self.on_queued()
            except Exception:
                log.exception("expansion failed; retrying", extra={"action": "expand_error"})
                await asyncio.sleep(RETRY_AFTER_ERROR)
                self._wake.set()
