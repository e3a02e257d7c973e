"""Group commit: concurrent ingests share one transaction and one round of fsyncs.

Each ingest waits on a future that resolves only after its blob and message row are
committed; while one transaction runs, the next batch gathers.  Under load this turns
N fsyncs into one; at idle a lone message commits at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from mailflow.blobs import Blobs
from mailflow.clock import Clock
from mailflow.errors import StorageUnavailable
from mailflow.model import (
    Delivery,
    Event,
    InboundMessage,
    Lease,
    MessageStatus,
    Outcome,
    StoredBatch,
)
from mailflow.pipeline.chain import PROCESS_CHAIN, ProcessStep
from mailflow.services.event_log import note_events
from mailflow.services.processor import Plan, plan_batch
from mailflow.services.recent import RecentMessages
from mailflow.store.repository import Repository
from mailflow.store.runner import StoreRunner

log = logging.getLogger(__name__)

MAX_BATCH_MESSAGES = 256
MAX_BATCH_BYTES = 32 * 1024 * 1024
HASH_IN_THREAD_ABOVE = 256 * 1024
BLOB_WAIT = 120.0  # seconds a transaction waits for its blob files before it gives up
COMMIT_WAIT = BLOB_WAIT + 60.0  # seconds an ingest waits for its commit (the writer is stuck)


@dataclass(slots=True)
class _Pending:
    message: InboundMessage
    data: bytes
    done: asyncio.Future[None]
    events: Sequence[Event]  # decided at accept time
    in_database: bool  # the body goes into the blob row, not a file
    # Set once the blob file is durable (bodies stored as files only); waited for by the
    # writer thread, hence not an asyncio future.
    blob_durable: Future[None] = field(default_factory=Future)


class QueueHandoff(Protocol):
    """What the ingest hands the local send queue (the scheduler implements it).

    Fresh deliveries: the ingest may insert some already leased to the scheduler, which
    sends them with no claim of its own (a fresh post's fastest path), and wakes it for
    the rest.  Outcomes: under load the single writer would alternate ingest
    transactions with the scheduler's outcome rounds, and each ingest would wait for a
    round; instead each ingest transaction takes whatever results are waiting and
    writes them too.
    """

    def ingest_lease(self) -> Lease | None: ...
    def take_leased(self, leased: list[Delivery]) -> None: ...
    def wake(self) -> None: ...
    def take_outcomes(self) -> list[Outcome]: ...
    def outcomes_stored(self, outcomes: list[Outcome], stale: list[Outcome]) -> None: ...
    def outcomes_returned(self, outcomes: list[Outcome]) -> None: ...


class IngestActivity:
    """Whether an ingest transaction runs or waits to: results given now are written soon.

    Created before the committer and the scheduler, written by the one and read by the
    other, so neither needs the other to be built first.
    """

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending = 0  # messages handed to the committer, their transaction not over

    def busy(self) -> bool:
        return self.pending > 0


@dataclass(frozen=True, slots=True)
class InlineExpansion:
    """The processing chain run inside the ingest transaction, for posts whose
    deliveries stay within ``max_rows`` (the rest are left to the processor)."""

    max_rows: int
    steps: Sequence[ProcessStep] = PROCESS_CHAIN


@dataclass(frozen=True, slots=True)
class IngestBatch:
    """Everything one ingest transaction writes."""

    messages: Sequence[InboundMessage]
    bodies: Mapping[str, bytes] = field(default_factory=dict)  # small ones, in the blob rows
    contents: Mapping[str, bytes] = field(default_factory=dict)  # every body, by blob hash
    events: Sequence[Event] = ()          # decided at accept time (discarded, held)
    lease: Lease | None = None            # fresh deliveries the scheduler takes now
    outcomes: Sequence[Outcome] = ()      # the scheduler's results waiting to be written


def store_batch(repo: Repository, batch: IngestBatch, now: float,
                ensure_blobs: Callable[[], None],
                expansion: InlineExpansion | None = None) -> StoredBatch:
    """Make a batch of received messages durable in one transaction (group commit).

    Blocking: runs on the writer thread.  Small bodies travel in their blob rows, so the
    commit's one fsync makes them durable with the rows; the other blobs are files,
    written and made durable off the writer: ``ensure_blobs``, called last before the
    commit, waits for that if it is still under way (so the rows are built meanwhile)
    and re-writes any file that is missing now (the garbage collector may have removed
    one just before the upsert took its row).  Nothing of the transaction reaches the
    disk before its commit, which is what an ingress waits for before it answers 250.

    With an ``expansion``, the processing chain runs for the messages in the same
    transaction while their deliveries fit (sparing small posts a second transaction);
    the rest stay ``received`` for the processor.  With a ``lease``, up to
    ``lease.limit`` of the deliveries are inserted already leased and returned.
    """
    messages = batch.messages
    with repo.ingest_transaction() as tx:
        tx.upsert_blobs(messages, now, batch.bodies)
        plan = (plan_batch(expansion.steps, tx.directory, messages, expansion.max_rows,
                           inline=True, now=now, read=lambda m: batch.contents[m.blob])
                if expansion is not None else Plan())
        tx.insert_messages(messages, now, plan.statuses())
        tx.insert_generated(plan.generated, now)
        tx.log_replies(plan.replied, now)
        tx.count_bounces(plan.bounces, now)
        tx.apply_memberships(plan.memberships, plan.answered, now)
        planned = plan.deliveries
        leased = (tx.lease_deliveries(planned[:batch.lease.limit], batch.lease, now)
                  if batch.lease is not None and planned else [])
        queued = planned[len(leased):] if leased else planned
        tx.insert_deliveries(queued, now)
        tx.add_events([*batch.events, *plan.events] if batch.events else plan.events, now)
        tx.release_blobs([m.blob for m in plan.done], now)
        stale = tx.record_outcomes(batch.outcomes, now)
        ensure_blobs()
    note_events(plan.events)
    held = sum(1 for m in messages if m.status is MessageStatus.HELD)
    return StoredBatch(left=len(messages) - held - plan.taken, queued=len(queued), leased=leased,
                       stale=stale)


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

    def __init__(self, runner: StoreRunner, blobs: Blobs, clock: Clock, *,
                 body_limit: int, expansion: InlineExpansion | None,
                 queue: QueueHandoff | None = None,
                 on_received: Callable[[], None] = lambda: None,
                 recent: RecentMessages | None = None,
                 activity: IngestActivity | None = None) -> None:
        self.runner = runner
        self.blobs = blobs
        self.clock = clock
        self.body_limit = body_limit
        self.expansion = expansion
        self.queue = queue              # the local scheduler, if any
        self.on_received = on_received  # messages await expansion: wake the processor
        self.recent = recent or RecentMessages()
        self.activity = activity or IngestActivity()
        self._incoming: asyncio.Queue[_Pending] = asyncio.Queue()
        self._unwritten: asyncio.Queue[_Pending] = asyncio.Queue()
        self._blob_writer = ThreadPoolExecutor(1, thread_name_prefix="mailflow-blobs")

    async def commit(self, message: InboundMessage, data: bytes,
                     events: Sequence[Event] = ()) -> None:
        """Return once the message (and ``events`` about it) is durable; raise
        StorageUnavailable otherwise."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending = _Pending(message, data, done, events,
                           in_database=len(data) <= self.body_limit)
        if pending.in_database:  # no file: nothing to wait for but the commit
            self.blobs.remember(message.blob, data)  # for the first send
        else:
            self._unwritten.put_nowait(pending)
        self._incoming.put_nowait(pending)
        self.activity.pending += 1
        try:
            # Shielded: a client that gives up does not cancel the batch's other messages.
            await asyncio.wait_for(asyncio.shield(done), COMMIT_WAIT)
        except TimeoutError:
            # The commit may still happen; the sender retries and at worst sends it twice,
            # which at-least-once allows.  A 250 is never given for what is not stored.
            log.error("commit of %s not done after %.0f s", message.id, COMMIT_WAIT,
                      extra={"action": "store_failed", "queue_id": message.id})
            raise StorageUnavailable("cannot store the message right now (timed out), "
                                     "try again later") from None

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._write_blobs())
                group.create_task(self._commit_rows())
        finally:
            self._blob_writer.shutdown(wait=False)

    # Each batch lives in one call: a variable of these loops would keep the last batch's
    # bodies (messages of up to ``max_message_size``) until the next message arrived.
    async def _write_blobs(self) -> None:
        while True:
            await self._write_batch(await _drain(self._unwritten))

    async def _write_batch(self, batch: list[_Pending]) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._blob_writer, self.blobs.write_many,
                [(p.message.blob, p.data) for p in batch])
        except Exception as exc:
            for pending in batch:
                pending.blob_durable.set_exception(exc)
            return
        for pending in batch:
            pending.blob_durable.set_result(None)

    async def _commit_rows(self) -> None:
        while True:
            await self._commit_counted(await _drain(self._incoming))

    async def _commit_counted(self, batch: list[_Pending]) -> None:
        try:
            await self._commit(batch)
        finally:
            self.activity.pending -= len(batch)

    async def _commit(self, batch: list[_Pending]) -> None:
        files = [p for p in batch if not p.in_database]
        bodies = {p.message.blob: p.data for p in batch if p.in_database}

        def ensure_blobs() -> None:
            for pending in files:
                pending.blob_durable.result(timeout=BLOB_WAIT)
            if files:  # a re-check: only stats what was just written
                self.blobs.write_many([(p.message.blob, p.data) for p in files])

        queue = self.queue
        outcomes = queue.take_outcomes() if queue else []
        events = [e for p in batch for e in p.events]
        ingest = IngestBatch([p.message for p in batch], bodies,
                             {p.message.blob: p.data for p in batch}, events,
                             queue.ingest_lease() if queue else None, outcomes)
        try:
            stored = await self.runner.write(store_batch, self.runner.repo, ingest,
                                             self.clock.now(), ensure_blobs, self.expansion)
        except Exception as exc:
            if queue and outcomes:
                queue.outcomes_returned(outcomes)
            _fail(batch, exc)
            return
        if queue:
            queue.outcomes_stored(outcomes, stored.stale)  # also: the ingest may be idle now
        self.recent.remember(ingest.messages)
        for pending in batch:
            if not pending.done.done():
                pending.done.set_result(None)
        if queue and stored.leased:
            queue.take_leased(stored.leased)
        if queue and stored.queued:
            queue.wake()
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
