"""The active loop between the send queue and the egress provider.

Three kinds of task cooperate, so the database and the network are both busy at once:

* the **claimer** leases due deliveries in batches (woken when work is queued, else
  sleeping until the next retry is due), groups recipients that share a message and a
  list into transactions of at most ``max_recipients_per_transaction``, and queues them;
* **senders** (one per egress connection) render each copy from the blob and send it;
* the **recorder** writes the outcomes back in batches: delivered, deferred with
  exponential backoff, or failed (5xx, or too old to retry).

Deliveries that were leased but not sent when the scheduler stops are handed back at once;
a crash leaves them leased, and the lease expiry returns them to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from mailflow.backoff import RetryPolicy
from mailflow.blobs import BlobStore
from mailflow.clock import Clock
from mailflow.egress.base import Egress, RecipientReply
from mailflow.errors import EgressUnavailable
from mailflow.metrics import DELIVERY_ATTEMPTS, TRANSACTION_SECONDS
from mailflow.model import Delivery, DeliveryStatus, InboundMessage, MailingList
from mailflow.pipeline.decorate import outbound_message
from mailflow.store.repository import Outcome
from mailflow.store.runner import StoreRunner

log = logging.getLogger(__name__)

IDLE_RECHECK = 30.0     # seconds between queue checks when nothing is known to be due
ERROR_BACKOFF = 1.0     # seconds to wait after a database error before claiming again
CONTENT_CACHE = 64      # rendered copies kept in memory (one per message and list)


@dataclass(frozen=True, slots=True)
class SchedulerOptions:
    batch_size: int
    max_recipients: int
    concurrency: int
    lease: float
    owner: str
    instance_id: str
    hostname: str
    retry: RetryPolicy


@dataclass(slots=True)
class Transaction:
    """Recipients sharing one message, one list, hence one content: one SMTP transaction."""

    message: InboundMessage
    mailing_list: MailingList
    deliveries: list[Delivery]


class Scheduler:
    def __init__(self, runner: StoreRunner, blobs: BlobStore, egress: Egress, clock: Clock,
                 options: SchedulerOptions) -> None:
        self.runner = runner
        self.blobs = blobs
        self.egress = egress
        self.clock = clock
        self.options = options
        self._wake = asyncio.Event()
        self._ready: asyncio.Queue[Transaction] = asyncio.Queue()
        self._outcomes: list[Outcome] = []
        self._outcomes_ready = asyncio.Event()
        self._in_flight = 0
        self._room = asyncio.Event()
        self._content: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._tasks: list[asyncio.Task[None]] = []

    def wake(self) -> None:
        """New work was queued: claim now instead of at the next timer."""
        self._wake.set()

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._claim_loop(), name="claimer"),
                       asyncio.create_task(self._record_loop(), name="recorder")]
        self._tasks += [asyncio.create_task(self._send_loop(), name=f"sender-{i}")
                        for i in range(self.options.concurrency)]

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming, finish transactions already on the wire, hand back the rest."""
        claimer, recorder, *senders = self._tasks
        claimer.cancel()
        unsent: list[Delivery] = []
        while not self._ready.empty():
            unsent.extend(self._ready.get_nowait().deliveries)
        for _ in senders:
            self._ready.put_nowait(None)  # type: ignore[arg-type]  # sentinel: stop
        _, pending = await asyncio.wait(senders, timeout=grace)
        for task in pending:
            task.cancel()
        recorder.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._flush_outcomes()
        # Whatever is still leased by us was claimed but never sent: hand it back now
        # rather than after the lease expires.
        released = await self.runner.write(self.runner.repo.release_leases,
                                           self.clock.now(), self.options.owner)
        if released:
            log.info("handed back %d leased deliveries (%d were queued here)", released,
                     len(unsent), extra={"action": "leases_released"})

    # -- claiming -----------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        repo = self.runner.repo
        low_water = self.options.concurrency * 2
        while True:
            while self._ready.qsize() >= low_water:
                self._room.clear()
                await self._room.wait()
            self._wake.clear()
            now = self.clock.now()
            try:
                claimed = await self.runner.write(
                    repo.claim_due_deliveries, now, self.options.batch_size,
                    self.options.lease, self.options.owner)
                if claimed:
                    await self._enqueue_transactions(claimed)
                    continue
                next_due = await self.runner.read(repo.next_due_at)
            except Exception:
                log.exception("claiming deliveries failed", extra={"action": "claim_error"})
                await asyncio.sleep(ERROR_BACKOFF)
                continue
            delay = IDLE_RECHECK if next_due is None else max(0.0, next_due - now)
            await self._sleep(min(delay, IDLE_RECHECK))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(seconds, 0.001))

    async def _enqueue_transactions(self, claimed: Sequence[Delivery]) -> None:
        repo = self.runner.repo
        message_ids = {d.message_id for d in claimed}
        list_ids = {d.list_id for d in claimed}
        messages = await self.runner.read(repo.messages_by_id, message_ids)
        lists = await self.runner.read(repo.lists_by_id, list_ids)
        groups: dict[tuple[str, int], list[Delivery]] = {}
        for delivery in claimed:
            groups.setdefault((delivery.message_id, delivery.list_id), []).append(delivery)
        orphans: list[Outcome] = []
        size = self.options.max_recipients
        for (message_id, list_id), group in groups.items():
            message, mailing_list = messages.get(message_id), lists.get(list_id)
            if message is None or mailing_list is None:
                orphans += [Outcome(d.id, DeliveryStatus.FAILED, "list or message deleted",
                                    message_id=d.message_id) for d in group]
                continue
            for start in range(0, len(group), size):
                self._ready.put_nowait(Transaction(message, mailing_list,
                                                   group[start:start + size]))
        if orphans:
            self._add_outcomes(orphans)

    # -- sending ------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while True:
            transaction = await self._ready.get()
            self._room.set()
            if transaction is None:
                return
            self._in_flight += 1
            try:
                self._add_outcomes(await self._send(transaction))
            finally:
                self._in_flight -= 1

    async def _send(self, tx: Transaction) -> list[Outcome]:
        recipients = [d.recipient for d in tx.deliveries]
        try:
            content = await self._render(tx)
            with TRANSACTION_SECONDS.time():
                replies = await self.egress.send(tx.mailing_list.bounces_address, recipients,
                                                 content)
        except EgressUnavailable as exc:
            replies = [RecipientReply(r, 451, str(exc)) for r in recipients]
        except FileNotFoundError:
            # Temporary on purpose: on a multi-node setup the blob folder may be unmounted;
            # the maximum age still ends the retries if the content is really gone.
            log.error("blob of %s is missing", tx.message.id, extra={"action": "blob_missing"})
            replies = [RecipientReply(r, 451, "4.3.0 message content not found in the blob "
                                              "store") for r in recipients]
        except Exception as exc:  # a bug must not wedge the queue: retry later
            log.exception("sending %s failed", tx.message.id, extra={"action": "send_error"})
            replies = [RecipientReply(r, 451, f"4.3.0 internal error: {exc}") for r in recipients]
        by_recipient = {reply.recipient: reply for reply in replies}
        now = self.clock.now()
        return [self._outcome(d, by_recipient.get(d.recipient), tx.message.id, now)
                for d in tx.deliveries]

    def _outcome(self, delivery: Delivery, reply: RecipientReply | None, message_id: str,
                 now: float) -> Outcome:
        if reply is None:
            reply = RecipientReply(delivery.recipient, 451, "4.3.0 no reply for recipient")
        if reply.delivered:
            return Outcome(delivery.id, DeliveryStatus.DELIVERED, str(reply),
                           message_id=message_id)
        retry = self.options.retry
        if reply.permanent or retry.expired(delivery.created_at, now):
            return Outcome(delivery.id, DeliveryStatus.FAILED, str(reply), message_id=message_id)
        due = now + retry.delay(delivery.attempts + 1)
        return Outcome(delivery.id, DeliveryStatus.DEFERRED, str(reply), due_at=due,
                       message_id=message_id)

    async def _render(self, tx: Transaction) -> bytes:
        key = (tx.message.id, tx.mailing_list.id)
        content = self._content.get(key)
        if content is None:
            raw = await asyncio.to_thread(self.blobs.read, tx.message.blob)
            content = outbound_message(raw, tx.message, tx.mailing_list,
                                       self.options.instance_id, self.options.hostname)
            self._content[key] = content
            while len(self._content) > CONTENT_CACHE:
                self._content.popitem(last=False)
        else:
            self._content.move_to_end(key)
        return content

    # -- recording ----------------------------------------------------------------------

    def _add_outcomes(self, outcomes: list[Outcome]) -> None:
        self._outcomes.extend(outcomes)
        self._outcomes_ready.set()

    async def _record_loop(self) -> None:
        while True:
            await self._outcomes_ready.wait()
            self._outcomes_ready.clear()
            try:
                await self._flush_outcomes()
            except Exception:
                log.exception("recording outcomes failed", extra={"action": "record_error"})
                await asyncio.sleep(ERROR_BACKOFF)
                self._outcomes_ready.set()

    async def _flush_outcomes(self) -> None:
        outcomes, self._outcomes = self._outcomes, []
        if not outcomes:
            return
        try:
            await self.runner.write(self.runner.repo.record_outcomes, self.clock.now(),
                                    outcomes)
        except BaseException:
            self._outcomes = outcomes + self._outcomes
            raise
        for status in (DeliveryStatus.DELIVERED, DeliveryStatus.DEFERRED, DeliveryStatus.FAILED):
            count = sum(1 for o in outcomes if o.status is status)
            if count:
                DELIVERY_ATTEMPTS.labels(outcome=status.value).inc(count)
        if any(o.status is DeliveryStatus.DEFERRED for o in outcomes):
            self.wake()  # the next retry may be sooner than the claimer's current sleep
        for o in outcomes:
            if o.status is not DeliveryStatus.DELIVERED:
                log.info("delivery %d %s: %s", o.delivery_id, o.status.value, o.reply,
                         extra={"action": o.status.value, "queue_id": o.message_id})
