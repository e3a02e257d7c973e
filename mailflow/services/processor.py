"""Runs the processing chain for stored messages and hands the result to the send queue.

Small posts go through the chain inside the ingest transaction itself (see
``services.commit``); this loop takes the rest: posts to large lists, whose expansion
must not delay the 250, and whatever a crash left ``received``.  It is woken when an
ingest leaves such messages, runs once at start, and looks every ``poll_interval`` for
messages other processes stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mailflow.clock import Clock
from mailflow.model import (
    BounceReport,
    Event,
    GeneratedMessage,
    InboundMessage,
    MembershipChange,
    MessageStatus,
    NewDelivery,
)
from mailflow.pipeline.chain import PROCESS_CHAIN, ProcessStep, run_process
from mailflow.pipeline.context import Directory
from mailflow.services.event_log import note_events
from mailflow.store.repository import Repository
from mailflow.store.runner import StoreRunner

log = logging.getLogger(__name__)

BATCH = 200
MAX_ROWS = 5000  # deliveries per expansion transaction (the writer is shared)
RETRY_AFTER_ERROR = 1.0


@dataclass(slots=True)
class Plan:
    """What the processing chain made of a batch of messages, for one transaction."""

    deliveries: list[NewDelivery] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    queued: list[InboundMessage] = field(default_factory=list)  # with deliveries
    done: list[InboundMessage] = field(default_factory=list)    # with none at all
    generated: list[GeneratedMessage] = field(default_factory=list)  # replies the steps wrote
    replied: list[tuple[int, str]] = field(default_factory=list)  # (list id, sender) answered
    bounces: list[BounceReport] = field(default_factory=list)  # to count against members
    memberships: list[MembershipChange] = field(default_factory=list)  # list commands'
    answered: list[str] = field(default_factory=list)  # addresses list commands answered

    def statuses(self) -> dict[str, MessageStatus]:
        statuses = dict.fromkeys((m.id for m in self.queued), MessageStatus.QUEUED)
        statuses.update(dict.fromkeys((m.id for m in self.done), MessageStatus.DONE))
        return statuses

    @property
    def taken(self) -> int:
        return len(self.queued) + len(self.done)


def plan_batch(steps: Sequence[ProcessStep], directory: Directory,
               batch: Sequence[InboundMessage], max_rows: int, *, inline: bool,
               now: float = 0.0, read: Callable[[InboundMessage], bytes] | None = None
               ) -> Plan:
    """Run the chain over messages of ``batch`` while their deliveries fit ``max_rows``.

    Inline (in the ingest transaction) a message too large for that is skipped and left
    to the processor; otherwise the first message is always taken, however large its
    list, and the batch ends at the first that does not fit.  ``read`` gives a message's
    bytes to the steps that ask for them.  What the steps want written (replies and
    the reply log) is taken only from the messages taken: a skipped one runs the steps
    again in the processor.
    """
    plan = Plan()
    for message in batch:
        if message.status is MessageStatus.HELD:
            continue  # kept for an owner: expanded once released (then ``received``)
        content = None if read is None else (lambda m=message: read(m))
        ctx = run_process(steps, message, directory, now, content)
        if len(plan.deliveries) + len(ctx.deliveries) > max_rows:
            if inline:
                continue
            if plan.deliveries:
                break
        plan.events.extend(ctx.events)
        own = any(d.message_id == message.id for d in ctx.deliveries)
        (plan.queued if own else plan.done).append(message)
        plan.deliveries.extend(ctx.deliveries)
        plan.generated.extend(ctx.generated)
        plan.replied.extend(ctx.replied)
        plan.bounces.extend(ctx.bounces)
        plan.memberships.extend(ctx.memberships)
        plan.answered.extend(ctx.answered)
    return plan


def expand_received(repo: Repository, now: float, limit: int,
                    steps: Sequence[ProcessStep] = PROCESS_CHAIN,
                    max_rows: int = MAX_ROWS,
                    read_file: Callable[[str], bytes] | None = None) -> int:
    """Run the chain over received messages, atomically with their status change.

    The messages are locked meanwhile, so two workers sharing a PostgreSQL database never
    expand the same message twice; a transaction stops taking messages after
    ``max_rows`` deliveries, so a post to a huge list does not hold the writer (and the
    ingests waiting for it) for long.  Blocking: runs on the writer thread.  Returns how
    many messages were expanded.
    """
    def read(message: InboundMessage) -> bytes:
        stored = repo.stored_body(message.blob)
        if stored is not None:
            return stored
        if read_file is None:
            raise FileNotFoundError(f"no blob store to read {message.blob} from")
        return read_file(message.blob)

    with repo.expansion_transaction() as tx:
        plan = plan_batch(steps, tx.directory, tx.take_received(limit), max_rows,
                          inline=False, now=now, read=read)
        tx.insert_generated(plan.generated, now)
        tx.log_replies(plan.replied, now)
        tx.count_bounces(plan.bounces, now)
        tx.apply_memberships(plan.memberships, plan.answered, now)
        tx.insert_deliveries(plan.deliveries, now)
        tx.add_events(plan.events, now)
        tx.mark_queued([m.id for m in plan.queued], now)
        tx.finish([m.id for m in plan.done], now)
    note_events(plan.events)
    return plan.taken


class Processor:
    def __init__(self, runner: StoreRunner, clock: Clock, on_queued: Callable[[], None],
                 poll_interval: float = 1.0,
                 steps: Sequence[ProcessStep] = PROCESS_CHAIN,
                 read_file: Callable[[str], bytes] | None = None) -> None:
        self.runner = runner
        self.read_file = read_file  # blob files, for steps that read a message
        self.clock = clock
        self.on_queued = on_queued
        self.poll_interval = poll_interval
        self.steps = steps
        self._wake = asyncio.Event()
        self._wake.set()  # expand whatever a previous run left behind

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wait_for_work()
            self._wake.clear()
            try:
                while True:
                    expanded = await self.runner.write(
                        expand_received, self.runner.repo, self.clock.now(), BATCH,
                        self.steps, MAX_ROWS, self.read_file)
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
