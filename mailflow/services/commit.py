"""Group commit: concurrent ingests share one transaction and one round of fsyncs.

Each ingest waits on a future that resolves only after its blob and message row are
committed; while one transaction runs, the next batch gathers.  Under load this turns
N fsyncs into one; at idle a lone message commits at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from mailflow.blobs import BlobStore
from mailflow.clock import Clock
from mailflow.errors import StorageUnavailable
from mailflow.model import Delivery, InboundMessage, Lease, Outcome
from mailflow.services.recent import RecentMessages
from mailflow.store.repository import Planner
from mailflow.store.runner import StoreRunner

log = logging.getLogger(__name__)

MAX_BATCH_MESSAGES = 256
MAX_BATCH_BYTES = 32 * 1024 * 1024
HASH_IN_THREAD_ABOVE = 256 * 1024
BLOB_WAIT = 120.0  # seconds a transaction waits for its blob files before it gives up


@dataclass(slots=True)
class _Pending:
    message: InboundMessage
    data: bytes
    done: asyncio.Future[None]
    in_database: bool  # the body goes into the blob row, not a file
    # Set once the blob file is durable (bodies stored as files only); waited for by the
    # writer thread, hence not an asyncio future.
    blob_durable: Future[None] = field(default_factory=Future)


class OutcomeQueue(Protocol):
    """Delivery results waiting to be written (the scheduler's), lent to the ingest.

    Under load the single writer would alternate ingest transactions with the
    scheduler's outcome rounds, and each ingest would wait for a round; instead each
    ingest transaction takes whatever results are waiting and writes them too.
    """

    def take_outcomes(self) -> list[Outcome]: ...
    def outcomes_stored(self, outcomes: list[Outcome]) -> None: ...
    def outcomes_returned(self, outcomes: list[Outcome]) -> None: ...


async def content_digest(data: bytes) -> str:
    """SHA-256 of a message; large ones are hashed off the event loop."""
    if len(data) > HASH_IN_THREAD_ABOVE:
        return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
    return hashlib.sha256(data).hexdigest()


class GroupCommitter:
    """Two loops over the same arrivals, overlapping.

    A body of at most ``body_limit`` bytes travels inside the transaction (the blob row
    holds it), so the commit's one fsync covers it.  Larger bodies are files: the blob
    loop writes the files of whatever has arrived and makes them durable with one sync,
    again and again.  The commit loop takes everything that arrived while the previous
    transaction ran (so the batches grow with the load) and builds one transaction,
    which waits for its messages' blob files only just before it commits.  A row thus
    never becomes durable before its body, and the waits overlap."""

    def __init__(self, runner: StoreRunner, blobs: BlobStore, clock: Clock, *,
                 plan: Planner, inline_limit: int, body_limit: int,
                 on_queued: Callable[[], None],
                 on_received: Callable[[], None], recent: RecentMessages | None = None,
                 lease: Callable[[], Lease | None] = lambda: None,
                 on_leased: Callable[[list[Delivery]], None] = lambda deliveries: None,
                 outcomes: OutcomeQueue | None = None) -> None:
        self.recent = recent or RecentMessages()
        self.runner = runner
        self.blobs = blobs
        self.clock = clock
        self.plan = plan
        self.inline_limit = inline_limit
        self.body_limit = body_limit
        self.on_queued = on_queued      # deliveries were queued: wake the scheduler
        self.on_received = on_received  # messages await expansion: wake the processor
        self.lease = lease              # how many fresh deliveries the scheduler takes now
        self.on_leased = on_leased      # ... and where they go, with no claim of its own
        self.outcomes = outcomes        # results to write along with each batch
        self._committing = False
        self._incoming: asyncio.Queue[_Pending] = asyncio.Queue()
        self._unwritten: asyncio.Queue[_Pending] = asyncio.Queue()
        self._blob_writer = ThreadPoolExecutor(1, thread_name_prefix="mailflow-blobs")

    async def commit(self, message: InboundMessage, data: bytes) -> None:
        """Return once the message is durable; raise StorageUnavailable otherwise."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending = _Pending(message, data, done, in_database=len(data) <= self.body_limit)
        if pending.in_database:  # no file: nothing to wait for but the commit
            self.blobs.remember(message.blob, data)  # for the first send
        else:
            self._unwritten.put_nowait(pending)
        self._incoming.put_nowait(pending)
        await done

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._write_blobs())
                group.create_task(self._commit_rows())
        finally:
            self._blob_writer.shutdown(wait=False)

    async def _write_blobs(self) -> None:
        while True:
            batch = await _drain(self._unwritten)
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self._blob_writer, self.blobs.write_many,
                    [(p.message.blob, p.data) for p in batch])
            except Exception as exc:
                for pending in batch:
                    pending.blob_durable.set_exception(exc)
                continue
            for pending in batch:
                pending.blob_durable.set_result(None)

    @property
    def busy(self) -> bool:
        """Whether a transaction runs or waits to: results given now are written soon."""
        return self._committing or not self._incoming.empty()

    async def _commit_rows(self) -> None:
        while True:
            batch = await _drain(self._incoming)
            self._committing = True
            try:
                await self._commit(batch)
            finally:
                self._committing = False

    async def _commit(self, batch: list[_Pending]) -> None:
        files = [p for p in batch if not p.in_database]
        bodies = {p.message.blob: p.data for p in batch if p.in_database}

        def ensure_blobs() -> None:
            for pending in files:
                pending.blob_durable.result(timeout=BLOB_WAIT)
            if files:  # a re-check: only stats what was just written
                self.blobs.write_many([(p.message.blob, p.data) for p in files])

        outcomes = self.outcomes.take_outcomes() if self.outcomes else []
        try:
            stored = await self.runner.write(
                self.runner.repo.store_messages, [p.message for p in batch],
                self.clock.now(), ensure_blobs, self.plan, self.inline_limit, self.lease(),
                bodies, outcomes)
        except Exception as exc:
            if self.outcomes and outcomes:
                self.outcomes.outcomes_returned(outcomes)
            _fail(batch, exc)
            return
        if self.outcomes:
            self.outcomes.outcomes_stored(outcomes)  # also: the ingest may now be idle
        self.recent.remember(p.message for p in batch)
        for pending in batch:
            if not pending.done.done():
                pending.done.set_result(None)
        if stored.leased:
            self.on_leased(stored.leased)
        if stored.queued:
            self.on_queued()
        if stored.left:
            self.on_received()


async def _drain(queue: asyncio.Queue[_Pending]) -> list[_Pending]:
    """Wait for one item, then take whatever else is waiting, within the batch limits."""
    batch = [await queue.get()]
    size = len(batch[0].data)
    while not queue.empty() and len(batch) < MAX_BATCH_MESSAGES and size < MAX_BATCH_BYTES:
        item = queue.get_nowait()
        batch.append(item)
        size += len(item.data)
    return batch


def _fail(batch: list[_Pending], exc: Exception) -> None:
    log.error("could not store %d message(s): %s: %s", len(batch), type(exc).__name__, exc,
              extra={"action": "store_failed"})
    error = StorageUnavailable(f"cannot store the message right now ({type(exc).__name__}), "
                               "try again later")
    for pending in batch:
        if not pending.done.done():
            pending.done.set_exception(error)
