"""Drives the pipeline for stored messages and hands the result to the send queue.

Small posts are expanded inside the ingest transaction itself (see
:meth:`Repository.store_messages`); this loop takes the rest: posts to large lists, whose
expansion must not delay the 250, and whatever a crash left ``received``.  It is woken
when an ingest leaves such messages, runs once at start, and looks every
``poll_interval`` for messages other processes stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from mailflow.clock import Clock
from mailflow.pipeline.expand import plan_deliveries
from mailflow.store.runner import StoreRunner

log = logging.getLogger(__name__)

BATCH = 200
RETRY_AFTER_ERROR = 1.0


class Processor:
    def __init__(self, runner: StoreRunner, clock: Clock, on_queued: Callable[[], None],
                 poll_interval: float = 1.0) -> None:
        self.runner = runner
        self.clock = clock
        self.on_queued = on_queued
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._wake.set()  # expand whatever a previous run left behind

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        repo = self.runner.repo
        while True:
            await self._wait_for_work()
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

    async def _wait_for_work(self) -> None:
        """Until woken, or until a look shows work another process stored.

        ``mailflow pipe`` and other relays sharing a PostgreSQL store write messages this
        process hears nothing about; a cheap read every ``poll_interval`` finds them.
        """
        while not self._wake.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            if not self._wake.is_set():
                try:
                    if await self.runner.read(self.runner.repo.has_received):
                        return
                except Exception:
                    log.exception("looking for work failed", extra={"action": "poll_error"})
