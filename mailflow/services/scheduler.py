"""The active loop between the send queue and the egress provider.

Two kinds of task cooperate, so the database and the network are both busy at once:

* the **queue keeper** runs rounds of one database transaction each: it writes back the
  outcomes the senders produced (delivered, deferred with exponential backoff, or failed
  on 5xx or when too old to retry) and leases the next due deliveries in a batch.  It is
  woken by new work, by outcomes and by room in the ready queue, else sleeps until the
  next retry is due.  Claimed recipients that share a message and a list become one
  transaction of at most ``max_recipients_per_transaction``;
* **senders** (one per egress connection) render each copy from the blob and send it.

**Routes.**  With routes configured (:mod:`mailflow.egress.routes`) the egress is several
*lanes* (:mod:`mailflow.services.lanes`), one per provider, each with its own ready queue
and its own senders (as many as its connection pool), so a slow or dead route never holds
up another.  Transactions are then also split by lane: recipients of one message and list
that go to different routes are different transactions.  The claim does not know about
routes (it takes the due deliveries in priority order, whatever their domain), so the
keeper's room is per lane:

* it claims while **any** lane has room (fewer than ``2 * concurrency`` transactions
  waiting), and the ingest may lease fresh deliveries on the same condition;
* a lane with room takes every transaction a claim brings it, as the single queue always
  did;
* a lane without room takes more only while its backlog would be on the wire within
  ``route_backlog`` seconds at its current pace (:meth:`Lane.takes_more`); the rest is
  **handed back**: written back as queued again (reply ``451 4.4.1 route … is busy``),
  due when that lane should have drained (at least a second later), and not logged one
  by one.  It was not attempted: the store counts no attempt and writes no event;
* after a round that handed work back, claims pause for ``poll_interval``: the next
  claim would most likely bring the busy route's work again, and a pause bounds that
  churn to one batch per interval while the other lanes still get theirs.

Without routes there is one lane and none of this runs: the grouping and queueing are the
single-queue code, with no per-recipient lookup and no timing.

Deliveries that were leased but not sent when the scheduler stops are handed back at once;
a crash leaves them leased, and the lease expiry returns them to the queue.

**Leases are renewed while they are held** (a heartbeat, as procrastinate's workers
send): every claim (and every ingest lease) gets a token of its own (``owner/n``), and
every ``lease / 3`` seconds the heartbeat extends the leases of the transactions this
scheduler holds, waiting or on the wire, so a transaction slower than
``delivery_lease`` is not claimed and sent again while it is still being sent.  A
transaction on the wire longer than ``transaction_timeout`` is presumed hung (the egress
gives up at that bound): its leases are left to run out.  The store records an outcome
only under the lease it names; one whose lease was lost (it ran out and the delivery was
claimed again, here or by another relay) is logged and counted
(``mailflow_leases_lost_total``), never applied.  A waiting transaction whose lease was
lost is not sent.  Recipients whose address needs SMTPUTF8 get transactions of their own,
so the ASCII recipients never depend on whether the next hop takes UTF-8 addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from mailflow import srs
from mailflow.backoff import RetryPolicy
from mailflow.blobs import Blobs
from mailflow.clock import Clock
from mailflow.errors import (
    EgressUnavailable,
    SmtpReplyError,
    StorageUnavailable,
    TemporaryFailure,
    recipient_reply,
)
from mailflow.headers import header_length, split_message
from mailflow.lru import BytesLRU
from mailflow.memory import DEFAULT_BUDGET, item_limit
from mailflow.metrics import (
    DELIVERY_ATTEMPTS,
    FORWARDS,
    LEASES_LOST,
    QUEUE_SECONDS,
    TRANSACTION_SECONDS,
)
from mailflow.model import (
    GENERATED,
    RELAYED,
    AuthorField,
    Delivery,
    DeliveryStatus,
    DmarcMode,
    Egress,
    FilterAction,
    FilterRule,
    InboundMessage,
    Lease,
    ListKind,
    MailingList,
    Member,
    MemberStatus,
    Outcome,
    RecipientReply,
)
from mailflow.pipeline.accept.filters import FilterRules
from mailflow.pipeline.chain import copy_recipient, render_copy, rendering_variant
from mailflow.pipeline.context import Identity
from mailflow.pipeline.notice import NOTICE_PROTOCOL, Failure
from mailflow.pipeline.send.bounce import returned_alias, rewritten_bounce
from mailflow.pipeline.send.dmarc import author
from mailflow.pipeline.send.envelope import envelope_sender
from mailflow.pipeline.send.filter_actions import applied_rule, copy_rules
from mailflow.pipeline.send.ses_bounce import ses_message_ids
from mailflow.services.dmarc_policy import DmarcPolicies
from mailflow.services.in_flight import LargeInFlight
from mailflow.services.lanes import Lane, RoutedEgress
from mailflow.services.recent import RecentMessages
from mailflow.srs import Srs
from mailflow.store.runner import StoreRunner
from mailflow.unsubscribe_tokens import UnsubscribeTokens
from mailflow.verp import Verp

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

ERROR_BACKOFF = 1.0     # seconds to wait after a database error before claiming again
LIST_CACHE_TTL = 2.0    # seconds a list's name, kind and priority are reused
LISTS_KEPT = 1000       # beyond this many lists remembered, the expired ones are dropped
BUSY_RETRY_MIN = 1.0    # seconds work handed back by a busy route waits at least

DECISIONS_KEPT = 4096  # messages whose per-message copy decisions are remembered
RENDER_THREADS = max(1, min(4, os.cpu_count() or 1))  # threads rendering and signing copies


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
    poll_interval: float = 1.0  # idle look for work other processes queued
    notify_poll_interval: float = 10.0  # the same while LISTEN/NOTIFY wakes us (PostgreSQL)
    route_backlog: float = 30.0  # seconds of work a busy route may hold (see above)
    transaction_timeout: float = 600.0  # on the wire longer: hung, leases not renewed
    srs: Srs | None = None  # envelope senders of alias forwards (None: the bounce address)
    dmarc: DmarcPolicies | None = None  # for lists with --dmarc auto (None: rewrite, unsure)
    dmarc_author_field: AuthorField = AuthorField.REPLY_TO
    verp: Verp | None = None  # personalized lists' per-member senders (None: the plain one)
    cache_bytes: int = DEFAULT_BUDGET.rendered_copies  # rendered copies kept in memory
    large_in_flight: int = DEFAULT_BUDGET.large_in_flight  # bytes (see services/in_flight)
    public_url: str = ""  # the List-* links' base (docs/lists.md)
    unsubscribe: UnsubscribeTokens | None = None  # signs one-click links of member copies
    filter_regex_timeout: float = 0.5  # a copy's tag/strip rule matching (as at accept)


@dataclass(slots=True)
class Transaction:
    """Recipients sharing one message, one list, hence one content: one SMTP transaction.

    While held (queued or on the wire) its leases are renewed: ``lease_until`` is when
    the first of them runs out as last known, ``sending_since`` the loop time its send
    began.
    """

    message: InboundMessage
    mailing_list: MailingList
    deliveries: list[Delivery]
    lease_until: float = 0.0
    sending_since: float | None = None
    renewing: bool = True  # False once presumed hung
    route: str = ""  # the lane's name, once queued on it


class Scheduler:
    def __init__(self, runner: StoreRunner, blobs: Blobs, egress: Egress, clock: Clock,
                 options: SchedulerOptions, recent: RecentMessages | None = None,
                 ingest_busy: Callable[[], bool] = lambda: False) -> None:
        self.recent = recent or RecentMessages()
        self._lists: dict[int, tuple[float, MailingList]] = {}
        self.runner = runner
        self.blobs = blobs
        self.egress = egress
        self.clock = clock
        self.options = options
        self._wake = asyncio.Event()
        self._lanes: list[Lane[Transaction]]
        if isinstance(egress, RoutedEgress):
            self._lanes = [Lane(lane.name, lane.egress, lane.concurrency,
                                options.route_backlog) for lane in egress.lanes]
            self._lane_of: Callable[[str], int] | None = egress.lane_of
        else:
            self._lanes = [Lane(egress.name, egress, options.concurrency)]
            self._lane_of = None
        self._ready = self._lanes[0].ready  # the default lane, the only one without routes
        self._paced_until = 0.0  # routed: no claim before this (loop time), see above
        self._outcomes: list[Outcome] = []
        self._signal = asyncio.Event()  # outcomes, room or new work: the keeper has a job
        self._stopping = False
        # Rendered copies by (message id, rendering variant): the transactions of a post
        # get the same bytes object, which the egress recognises by identity.  A copy
        # too large to keep is rendered again for a later transaction.
        self._content: BytesLRU[tuple[str, Hashable]] = BytesLRU(
            options.cache_bytes, max_item=item_limit(options.cache_bytes))
        # Shared copies being made, by the same key: a transaction that needs one waits.
        self._making: dict[tuple[str, Hashable], asyncio.Future[bytes]] = {}
        self._large = LargeInFlight(options.large_in_flight, self._content.max_item)
        self._identity = Identity(options.instance_id, options.hostname, options.public_url,
                                  options.unsubscribe)
        # The copies' MIME work and signatures: threads of their own, as many as cores.
        # A signature lets go of the GIL, the rest of a rendering holds it; on the loop's
        # default executor (cores + 4 threads) the extra threads only queued for the GIL,
        # handing it over more often, and each kept a heap of its own.
        self._renderers = ThreadPoolExecutor(RENDER_THREADS,
                                             thread_name_prefix="mailflow-render")
        # The lists' filter rules, for their tag and strip rules; set by the app.
        self.filters: FilterRules | None = None
        # Per message and shared variant: (tag/strip rule, DMARC From), see
        # _message_decisions; small tuples of shared objects, bounded by their number.
        self._decided: OrderedDict[tuple[str, Hashable],
                                   tuple[FilterRule | None, AuthorField | None]] = OrderedDict()
        # What signs a list's rendered copies (DKIM, ``services/dkim_keys``), last, or
        # None (no key); set by the app.
        self.signer: Callable[[MailingList], Awaitable[Callable[[bytes], bytes] | None]] \
            | None = None
        # Told of alias forwards that failed for good (``services.notices``); set by the app.
        self.on_failed: Callable[[Failure], None] | None = None
        # What relayed bounces and failure notices are sent "through" (no list has id 0).
        self._relayed = MailingList(RELAYED, f"MAILER-DAEMON@{options.hostname}",
                                    ListKind.ALIAS, "", 0, 0.0)
        self._tasks: list[asyncio.Task[None]] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._senders: list[tuple[Lane[Transaction], asyncio.Task[None]]] = []
        # Transactions leased to us and not finished, by id(): the heartbeat renews them.
        self._held: dict[int, Transaction] = {}
        self._claims = itertools.count(1)  # numbers the lease tokens
        self._handing: set[asyncio.Task[None]] = set()  # leased at ingest, being grouped
        # Whether an ingest transaction will run soon and carry our outcomes (the group
        # committer's activity); a retry time it learnt from them.
        self.ingest_busy = ingest_busy
        self._retry_at: float | None = None
        # Whether the other relays' commits wake us (``store.notify``; set by the app):
        # then the idle look for work is only a fallback, every ``notify_poll_interval``.
        self.listening: Callable[[], bool] = lambda: False

    def wake(self) -> None:
        """New work was queued: claim now instead of at the next timer."""
        self._wake.set()
        self._signal.set()

    def ingest_lease(self) -> Lease | None:
        """How the ingest may lease fresh deliveries to this scheduler right now.

        Only while the senders are short of work: otherwise fresh deliveries queue, and
        priorities and fairness are the claim's to decide.
        """
        if self._stopping or not self._room():
            return None
        return Lease(self._lease_token(), self.options.lease, self.options.batch_size)

    def _lease_token(self) -> str:
        """A lease token of its own for each claim: ``owner/n``.

        So an outcome is recorded only for the very lease it was sent under, even when
        this scheduler claimed the same delivery again after its first lease ran out.
        """
        return f"{self.options.owner}/{next(self._claims):x}"

    def take_leased(self, leased: list[Delivery]) -> None:
        """Send deliveries the ingest transaction leased to us (no claim needed)."""
        task = asyncio.create_task(self._enqueue_handed(leased))
        self._handing.add(task)
        task.add_done_callback(self._handing.discard)

    async def _enqueue_handed(self, leased: list[Delivery]) -> None:
        try:
            await self._enqueue_transactions(leased)
        except Exception:
            # Still leased to us: the lease expiry (or the hand-back at stop) returns them.
            log.exception("could not take %d leased deliveries", len(leased),
                          extra={"action": "queue_error"})

    # -- outcomes carried by the ingest (``services.commit.QueueHandoff``) --------------

    def take_outcomes(self) -> list[Outcome]:
        """The outcomes waiting to be written, for the ingest transaction about to run."""
        if self._stopping:  # the keeper's last round writes them
            return []
        outcomes, self._outcomes = self._outcomes, []
        return outcomes

    def outcomes_stored(self, outcomes: list[Outcome], stale: list[Outcome]) -> None:
        """An ingest transaction wrote them (maybe none; not ``stale``: their leases were
        lost); the keeper looks again."""
        deferred_until = self._report(outcomes, stale)
        if deferred_until is not None:
            self._retry_at = min(deferred_until, self._retry_at or deferred_until)
        self._signal.set()

    def outcomes_returned(self, outcomes: list[Outcome]) -> None:
        """The ingest transaction failed: the keeper writes them itself."""
        self._outcomes = outcomes + self._outcomes
        self._signal.set()

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._keep_queue(), name="queue-keeper")]
        self._senders = [
            (lane, asyncio.create_task(self._send_loop(lane), name=f"sender-{n}-{i}"))
            for n, lane in enumerate(self._lanes) for i in range(lane.concurrency)]
        self._tasks += [task for _, task in self._senders]
        self._heartbeat = asyncio.create_task(self._renew_leases(), name="lease-heartbeat")

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming, finish transactions already on the wire, hand back the rest."""
        self._stopping = True
        if not self._tasks:
            # Never started: the relay is stopping because its start failed (a port in
            # use), before the keeper claimed or the ingest leased anything to us.
            return
        keeper, *senders = self._tasks
        # Let the keeper finish its round: a write cancelled half-way cannot tell whether
        # the outcomes it carried were stored, and they must be stored exactly once.
        self._signal.set()
        if self._handing:
            await asyncio.wait(list(self._handing), timeout=grace)
        _, still_running = await asyncio.wait([keeper], timeout=grace)
        for task in still_running:
            task.cancel()
        unsent: list[Delivery] = []
        for lane in self._lanes:
            while not lane.ready.empty():
                transaction = lane.ready.get_nowait()
                if transaction is not None:
                    unsent.extend(transaction.deliveries)
        for lane, _ in self._senders:
            lane.ready.put_nowait(None)  # sentinel: stop
        _, pending = await asyncio.wait(senders, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._renderers.shutdown(wait=False)
        if self._heartbeat is not None:  # nothing is on the wire any more
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        self._held.clear()
        await self._exchange(claim=False)
        # Whatever is still leased by us was claimed but never sent: hand it back now
        # rather than after the lease expires.
        released = await self.runner.write(self.runner.repo.release_leases,
                                           self.clock.now(), self.options.owner)
        if released:
            log.info("handed back %d leased deliveries (%d were queued here)", released,
                     len(unsent), extra={"action": "leases_released"})

    # -- the queue keeper: record outcomes and claim, one transaction per round ---------

    def _room(self) -> bool:
        """Whether a lane is short of work (without routes: the one ready queue)."""
        lanes = self._lanes
        if len(lanes) == 1:
            return self._ready.qsize() < lanes[0].low_water
        if asyncio.get_running_loop().time() < self._paced_until:
            return False
        return any(lane.has_room for lane in lanes)

    async def _keep_queue(self) -> None:
        next_due: float | None = self.clock.now()  # unknown at start: look at once
        while not self._stopping:
            if self._retry_at is not None:
                next_due = self._retry_at if next_due is None else min(next_due,
                                                                       self._retry_at)
                self._retry_at = None
            now = self.clock.now()
            room = self._room()
            claim = room and (self._wake.is_set() or (next_due is not None and next_due <= now))
            # Outcomes alone wait for the next ingest transaction, if one is coming: it
            # takes them, and signals when it is done (no wake-up is lost: the check and
            # the wait's clear happen without a yield in between).
            if not claim and (not self._outcomes or self.ingest_busy()):
                next_due = await self._idle(now, next_due, room)
                continue
            if claim:
                self._wake.clear()
            try:
                claimed, deferred_until = await self._exchange(claim)
                if claim and len(claimed) < self.options.batch_size:
                    # Nothing more is due now; sleep until the next retry or lease expiry.
                    next_due = await self.runner.read(self.runner.repo.next_due_at)
                elif claimed:
                    next_due = now  # a full batch: there may be more
                if deferred_until is not None:
                    next_due = deferred_until if next_due is None else min(next_due,
                                                                           deferred_until)
                if claimed:
                    await self._enqueue_transactions(claimed)
            except Exception:
                log.exception("queue round failed", extra={"action": "queue_error"})
                await asyncio.sleep(ERROR_BACKOFF)
                next_due = self.clock.now()

    async def _idle(self, now: float, next_due: float | None, room: bool) -> float | None:
        """Sleep until signalled or the next retry, looking now and then for other work.

        ``mailflow pipe`` and other relays on a shared PostgreSQL store queue deliveries
        this process hears nothing about; a read every ``poll_interval`` finds them
        (every ``notify_poll_interval`` while PostgreSQL's NOTIFY wakes us at once).
        Returns the next due time as then known.
        """
        poll = (self.options.notify_poll_interval if self.listening()
                else self.options.poll_interval)
        self._signal.clear()
        # Without room in the ready queue a due time does not matter: a sender taking a
        # transaction signals.
        delay = poll if next_due is None or not room else min(next_due - now, poll)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._signal.wait(), timeout=max(delay, 0.001))
        if self._signal.is_set() or not room or (next_due is not None
                                                 and next_due <= self.clock.now()):
            return next_due
        try:
            return await self.runner.read(self.runner.repo.next_due_at)
        except Exception:
            log.exception("looking for work failed", extra={"action": "poll_error"})
            return next_due

    async def _exchange(self, claim: bool) -> tuple[list[Delivery], float | None]:
        """Write back pending outcomes and (optionally) lease due work, in one transaction.

        Returns the deliveries claimed and the earliest retry time among the outcomes.
        """
        outcomes, self._outcomes = self._outcomes, []
        if not outcomes and not claim:
            return [], None
        limit = self.options.batch_size if claim else 0
        try:
            claimed, stale = await self.runner.write(
                self.runner.repo.record_and_claim, self.clock.now(), outcomes, limit,
                self.options.lease, self._lease_token())
        except BaseException:
            self._outcomes = outcomes + self._outcomes
            raise
        return claimed, self._report(outcomes, stale)

    def _report(self, outcomes: list[Outcome], stale: list[Outcome]) -> float | None:
        if stale:
            LEASES_LOST.labels(stage="outcome").inc(len(stale))
            for o in stale:
                log.warning("delivery %d: lease lost before its outcome (%s %s) was "
                            "recorded; not applied", o.delivery_id, o.status.value, o.reply,
                            extra={"action": "lease_lost", "queue_id": o.message_id})
            refused = {id(o) for o in stale}
            outcomes = [o for o in outcomes if id(o) not in refused]
        deferred_until = None
        for status in (DeliveryStatus.DELIVERED, DeliveryStatus.DEFERRED, DeliveryStatus.FAILED):
            count = sum(1 for o in outcomes if o.status is status)
            if count:
                DELIVERY_ATTEMPTS.labels(outcome=status.value).inc(count)
        for o in outcomes:  # each was logged when it happened (``_note_attempt``)
            if o.status is DeliveryStatus.DEFERRED or o.status is DeliveryStatus.QUEUED:
                deferred_until = min(o.due_at, deferred_until or o.due_at)
        return deferred_until

    async def _enqueue_transactions(self, claimed: Sequence[Delivery]) -> None:
        messages, lists = await self._context({d.message_id for d in claimed},
                                              {d.list_id for d in claimed})
        if self._lane_of is not None:
            self._enqueue_routed(claimed, messages, lists, self._lane_of)
            return
        # Recipients that need SMTPUTF8 travel apart (``isascii``), so the others never
        # depend on whether the next hop takes UTF-8 addresses.
        groups: dict[tuple[str, int, bool], list[Delivery]] = {}
        for delivery in claimed:
            key = (delivery.message_id, delivery.list_id, delivery.recipient.isascii())
            groups.setdefault(key, []).append(delivery)
        orphans: list[Outcome] = []
        size = self.options.max_recipients
        lane = self._lanes[0]
        for (message_id, list_id, _), group in groups.items():
            message, mailing_list = messages.get(message_id), lists.get(list_id)
            if message is None or mailing_list is None:
                orphans += _orphaned(group)
                continue
            for chunk in _chunks(group, mailing_list, size):
                self._hold(lane, Transaction(message, mailing_list, chunk))
        if orphans:
            self._add_outcomes(orphans)

    def _enqueue_routed(self, claimed: Sequence[Delivery], messages: dict[str, InboundMessage],
                        lists: dict[int, MailingList], lane_of: Callable[[str], int]) -> None:
        """Group by message, list and lane; a lane without room keeps a bounded backlog."""
        groups: dict[tuple[str, int, int, bool], list[Delivery]] = {}
        for delivery in claimed:
            key = (delivery.message_id, delivery.list_id, lane_of(delivery.recipient),
                   delivery.recipient.isascii())
            groups.setdefault(key, []).append(delivery)
        lanes = self._lanes
        had_room = [lane.has_room for lane in lanes]
        outcomes: list[Outcome] = []
        handed_back: dict[str, int] = {}
        size = self.options.max_recipients
        now, pace = self.clock.now(), asyncio.get_running_loop().time()
        for (message_id, list_id, index, _), group in groups.items():
            message, mailing_list = messages.get(message_id), lists.get(list_id)
            if message is None or mailing_list is None:
                outcomes += _orphaned(group)
                continue
            lane = lanes[index]
            for chunk in _chunks(group, mailing_list, size):
                if had_room[index] or lane.takes_more(pace):
                    self._hold(lane, Transaction(message, mailing_list, chunk))
                    continue
                outcomes += self._hand_back(lane, chunk, now, pace)
                handed_back[lane.name] = handed_back.get(lane.name, 0) + len(chunk)
        if handed_back:
            self._paced_until = pace + self.options.poll_interval
            for name, count in handed_back.items():
                log.info("route %s busy: handed back %d deliveries", name, count,
                         extra={"action": "route_busy"})
        if outcomes:
            self._add_outcomes(outcomes)

    def _hand_back(self, lane: Lane[Transaction], chunk: list[Delivery], now: float,
                   pace: float) -> list[Outcome]:
        """Queued again, due about when ``lane`` will have sent what it holds."""
        busy = EgressUnavailable(f"route {lane.name} is busy; handed back").smtp_reply()
        due = now + min(max(BUSY_RETRY_MIN, lane.drain_seconds(pace)), self.options.lease)
        return [Outcome(d.id, DeliveryStatus.QUEUED, busy, due_at=due, message_id=d.message_id,
                        lease=d.lease_owner) for d in chunk]

    def _hold(self, lane: Lane[Transaction], tx: Transaction) -> None:
        """Queue ``tx`` on ``lane``; its leases are renewed until its outcomes are in."""
        tx.lease_until = min(d.due_at for d in tx.deliveries)
        tx.route = lane.name
        self._held[id(tx)] = tx
        lane.ready.put_nowait(tx)

    def busy_connections(self) -> dict[str, tuple[int, int]]:
        """Per route: (transactions on the wire now, its pool size), for the gauges."""
        busy = {lane.name: 0 for lane in self._lanes}
        for tx in list(self._held.values()):
            if tx.sending_since is not None and tx.route in busy:
                busy[tx.route] += 1
        return {lane.name: (busy[lane.name], lane.concurrency) for lane in self._lanes}

    async def _context(self, message_ids: set[str], list_ids: set[int]
                       ) -> tuple[dict[str, InboundMessage], dict[int, MailingList]]:
        """The messages and lists of claimed deliveries: from memory where possible."""
        messages: dict[str, InboundMessage] = {}
        for message_id in message_ids:
            message = self.recent.get(message_id)
            if message is not None:
                messages[message_id] = message
        now = self.clock.now()
        lists = {list_id: entry[1] for list_id in list_ids
                 if (entry := self._lists.get(list_id)) is not None and entry[0] > now}
        if RELAYED in list_ids:
            lists[RELAYED] = self._relayed
        missing_messages = message_ids - messages.keys()
        missing_lists = list_ids - lists.keys()
        if missing_messages or missing_lists:
            found_messages, found_lists = await self.runner.read(
                self.runner.repo.delivery_context, missing_messages, missing_lists)
            messages.update(found_messages)
            lists.update(found_lists)
            for list_id, mailing_list in found_lists.items():
                self._lists[list_id] = (now + LIST_CACHE_TTL, mailing_list)
            if len(self._lists) > LISTS_KEPT:
                self._lists = {key: entry for key, entry in self._lists.items()
                               if entry[0] > now}
        return messages, lists

    # -- sending ------------------------------------------------------------------------

    async def _send_loop(self, lane: Lane[Transaction]) -> None:
        ready, egress = lane.ready, lane.egress
        # Routed lanes time their transactions: the pace bounds their backlog.
        timer = asyncio.get_running_loop().time if len(self._lanes) > 1 else None
        loop = asyncio.get_running_loop()
        while True:
            transaction = await ready.get()
            self._signal.set()  # room in the ready queue: the keeper may claim more
            if transaction is None:
                return
            try:
                if not await self._still_leased(transaction):
                    continue
                transaction.sending_since = loop.time()
                if timer is None:
                    self._add_outcomes(await self._send(transaction, egress))
                    continue
                token = lane.started(timer())
                try:
                    outcomes = await self._send(transaction, egress)
                finally:
                    lane.finished(token, timer())
                self._add_outcomes(outcomes)
            finally:
                self._held.pop(id(transaction), None)

    async def _send(self, tx: Transaction, egress: Egress) -> list[Outcome]:
        recipients = [d.recipient for d in tx.deliveries]
        content = b""
        large = await self._large.enter(tx.message.size)
        try:
            content = await self._render(tx)
            with TRANSACTION_SECONDS.labels(route=egress.name).time():
                replies = await egress.send(
                    envelope_sender(tx.message, tx.mailing_list, self.options.srs,
                                    self.clock.now(), self.options.verp,
                                    copy_recipient(tx.mailing_list, recipients)),
                    recipients, content)
        except SmtpReplyError as exc:  # EgressUnavailable, or a provider's own refusal
            replies = [_reply(r, exc) for r in recipients]
        except FileNotFoundError:
            # Temporary on purpose: on a multi-node setup the blob folder may be unmounted;
            # the maximum age still ends the retries if the content is really gone.
            log.error("blob of %s is missing", tx.message.id, extra={"action": "blob_missing"})
            missing = StorageUnavailable("message content not found in the blob store")
            replies = [_reply(r, missing) for r in recipients]
        except Exception as exc:  # a bug must not wedge the queue: retry later
            log.exception("sending %s failed", tx.message.id, extra={"action": "send_error"})
            internal = TemporaryFailure(f"internal error: {exc}")
            replies = [_reply(r, internal) for r in recipients]
        finally:
            self._large.leave(large)
        by_recipient = {reply.recipient: reply for reply in replies}
        now = self.clock.now()
        outcomes = [self._outcome(d, by_recipient.get(d.recipient), tx.message.id, now)
                    for d in tx.deliveries]
        _note_attempt(tx, outcomes, now)
        if self.on_failed is not None:
            self._report_failures(tx, outcomes, content, now)
        return outcomes

    def _report_failures(self, tx: Transaction, outcomes: list[Outcome], content: bytes,
                         now: float) -> None:
        """Tell ``on_failed`` of an alias forward that failed for good (one report per
        transaction); a list's 5xx failures count against its members in the store
        (bounce processing)."""
        mailing_list = tx.mailing_list
        if mailing_list.kind is not ListKind.ALIAS or mailing_list.id == RELAYED:
            return
        failed = [o for o in outcomes if o.status is DeliveryStatus.FAILED]
        if not failed or self.on_failed is None:
            return
        expired = any(not o.reply.startswith("5") for o in failed)
        self.on_failed(Failure(tx.message, mailing_list.address,
                               tuple(o.reply for o in failed),
                               split_message(content)[0], expired, now))

    def _outcome(self, delivery: Delivery, reply: RecipientReply | None, message_id: str,
                 now: float) -> Outcome:
        lease = delivery.lease_owner
        if reply is None:
            reply = _reply(delivery.recipient, TemporaryFailure("no reply for recipient"))
        if reply.delivered:
            return Outcome(delivery.id, DeliveryStatus.DELIVERED, str(reply),
                           message_id=message_id, lease=lease, provider_id=reply.provider_id)
        retry = self.options.retry
        if reply.permanent or retry.expired(delivery.created_at, now):
            return Outcome(delivery.id, DeliveryStatus.FAILED, str(reply), message_id=message_id,
                           lease=lease)
        due = now + retry.delay(delivery.attempts + 1)
        return Outcome(delivery.id, DeliveryStatus.DEFERRED, str(reply), due_at=due,
                       message_id=message_id, lease=lease)

    async def _render(self, tx: Transaction) -> bytes:
        """The copy the send chain makes of the message for this transaction."""
        returned = _returned_bounce(tx)
        recipient = copy_recipient(tx.mailing_list, [d.recipient for d in tx.deliveries])
        rules = await self._copy_rules(tx.mailing_list)
        variant = rendering_variant(tx.mailing_list, recipient, rules=rules)
        if returned:  # the report names its recipient
            variant = (variant, tuple(d.recipient for d in tx.deliveries))
        key = (tx.message.id, variant)
        content = self._content.get(key)
        if content is not None:
            return content
        if recipient:  # a personalized copy is its one member's: never reused, not kept
            return await self._make_copy(tx, returned, recipient, rules)
        making = self._making.get(key)
        if making is not None:  # another transaction is making this very copy: its bytes
            return await asyncio.shield(making)
        # One rendering (and one signature: its t= is the time it is made) however many
        # transactions of the post start at once.
        making = self._making[key] = asyncio.get_running_loop().create_future()
        try:
            content = await self._make_copy(tx, returned, recipient, rules)
        except BaseException as exc:
            making.set_exception(exc if isinstance(exc, Exception) else TemporaryFailure(
                "the copy was not finished, try again later"))
            making.exception()  # (retrieved: the waiters, if any, raise it themselves)
            raise
        finally:
            del self._making[key]
        making.set_result(content)
        self._content.put(key, content)
        return content

    async def _make_copy(self, tx: Transaction, returned: bool, recipient: str,
                         rules: tuple[FilterRule, ...]) -> bytes:
        raw = await self._body(tx.message.blob)
        if returned:
            sent_for = await self._ses_bounce_alias(raw)
            raw = await self._off_loop(self._rewritten, raw, tx, sent_for)
        rule, rewrite_from = await self._message_decisions(raw, tx, rules)
        member = await self._copy_member(tx, recipient)
        render: Callable[[], bytes] = functools.partial(
            render_copy, raw, tx.message, tx.mailing_list, self._identity, member=member,
            rewrite_from=rewrite_from, filter_rule=rule)
        sign = None if self.signer is None else await self.signer(tx.mailing_list)
        if sign is not None:  # over the final bytes, once per rendering variant
            render = functools.partial(_then, render, sign)
        if sign is not None or tx.mailing_list.decoration.changes_copies or (
                rule is not None and rule.action is FilterAction.STRIP):
            # MIME work and signatures: off the loop, in one hop.
            return await self._off_loop(render)
        return render()

    async def _off_loop(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn`` on a rendering thread (CPU work on a copy: parsing, MIME, signing)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._renderers, functools.partial(fn, *args, **kwargs))

    async def _message_decisions(self, raw: bytes, tx: Transaction,
                                 rules: tuple[FilterRule, ...]
                                 ) -> tuple[FilterRule | None, AuthorField | None]:
        """What a copy's rendering decides from the message alone: the tag or strip rule
        that applies, and the DMARC From.  Once per message and shared variant: the
        copies of a personalized list differ by member only, and each member's copy
        must not parse and match the message again."""
        key = (tx.message.id, rendering_variant(tx.mailing_list, rules=rules))
        found = self._decided.get(key)
        if found is None:
            rule = None
            if rules:  # parses and matches: a thread
                rule = await self._off_loop(applied_rule, raw, rules,
                                            self.options.filter_regex_timeout)
            found = (rule, await self._rewrite_from(raw, tx))
            self._decided[key] = found
            while len(self._decided) > DECISIONS_KEPT:
                self._decided.popitem(last=False)
        return found

    async def _copy_rules(self, mailing_list: MailingList) -> tuple[FilterRule, ...]:
        """The list's filter rules if one of them changes copies (tag, strip)."""
        if self.filters is None or mailing_list.id <= 0:
            return ()
        found = await self.filters.rules_for([mailing_list.address])
        return copy_rules(found.get(mailing_list.address, ()))

    async def _copy_member(self, tx: Transaction, recipient: str) -> Member | None:
        """The member a personalized copy is for (None: a shared copy).  Its name is read
        only when the list's templates may show it (``templates.reads_member_name``): the
        copy of a list whose footer names only the member's address costs no query."""
        if not recipient:
            return None
        decoration, name = tx.mailing_list.decoration, ""
        if "member" in decoration.header_template + decoration.footer_template:
            from mailflow.pipeline.send.templates import reads_member_name  # Jinja2: lazily
            if any(map(reads_member_name, (decoration.header_template,
                                           decoration.footer_template))):
                name = await self.runner.read(self.runner.repo.member_name, tx.mailing_list.id,
                                              recipient)
        return Member(tx.mailing_list.id, recipient, MemberStatus.ACTIVE, 0.0, name=name)

    async def _rewrite_from(self, raw: bytes, tx: Transaction) -> AuthorField | None:
        """Whether this list copy carries the list's From: (DMARC), decided once per
        rendering: where the author goes, or None."""
        mode = tx.mailing_list.dmarc
        if (mode is DmarcMode.NEVER or tx.mailing_list.kind is not ListKind.LIST
                or tx.message.protocol == GENERATED):
            return None
        field = self.options.dmarc_author_field
        if mode is DmarcMode.ALWAYS or self.options.dmarc is None:
            return field
        _, address = author(raw[:header_length(raw)])
        if not address:
            return None
        return field if await self.options.dmarc.requires_rewrite(address) else None

    async def _ses_bounce_alias(self, raw: bytes) -> str:
        """The alias an Amazon SES bounce mail's copy was sent for, by SES's Message-ID
        (when the returned header lacks our marker); "" for any other bounce.  The
        scan is a thread's, as the rewriting: a bounce may be large."""
        ses_ids = await asyncio.to_thread(_unmarked_ses_ids, raw, self.options.instance_id)
        if not ses_ids:
            return ""
        found = await self.runner.read(self.runner.repo.list_address_sent_as, ses_ids)
        return found or ""

    def _rewritten(self, raw: bytes, tx: Transaction, sent_for: str = "") -> bytes:
        """A returned bounce as the report the original sender gets (a thread: the
        bounce may be large)."""
        message = tx.message
        recipients = {d.recipient for d in tx.deliveries}
        return rewritten_bounce(
            raw, to=next(iter(recipients)) if len(recipients) == 1 else "",
            srs_address=next((r for r in message.rcpt_tos if srs.is_srs(r)), ""),
            instance_id=self.options.instance_id, hostname=self.options.hostname,
            arrival=message.received_at, at=self.clock.now(), sent_for=sent_for)

    async def _body(self, digest: str) -> bytes:
        """A stored body: from memory after a fresh ingest, else its blob row or file."""
        raw = self.blobs.cached(digest)
        if raw is None:
            raw = await self.runner.read(self.runner.repo.stored_body, digest)
        if raw is None:
            raw = await asyncio.to_thread(self.blobs.read, digest)
        return raw

    # -- leases -------------------------------------------------------------------------

    @property
    def _heartbeat_period(self) -> float:
        return self.options.lease / 3

    async def _renew_leases(self) -> None:
        """The heartbeat: extend the leases of what this scheduler holds, every period."""
        while True:
            await asyncio.sleep(self._heartbeat_period)
            try:
                await self._renew(self._due_for_renewal())
            except Exception:  # the next beat tries again; a lost lease is found then
                log.exception("renewing leases failed", extra={"action": "lease_error"})

    def _due_for_renewal(self) -> list[Transaction]:
        """Held transactions renewed more than half a period ago, but none presumed hung."""
        now, loop_now = self.clock.now(), asyncio.get_running_loop().time()
        fresh_until = now + self.options.lease - self._heartbeat_period / 2
        due = []
        for tx in self._held.values():
            if not tx.renewing or tx.lease_until > fresh_until:
                continue
            if (tx.sending_since is not None
                    and loop_now - tx.sending_since > self.options.transaction_timeout):
                tx.renewing = False
                log.warning("transaction of %s on the wire for more than %.0f s: its leases "
                            "are left to run out", tx.message.id,
                            self.options.transaction_timeout,
                            extra={"action": "transaction_hung", "queue_id": tx.message.id})
                continue
            due.append(tx)
        return due

    async def _renew(self, due: list[Transaction]) -> None:
        """Renew the leases of ``due`` in one write; drop what was lost from those not
        yet on the wire (another holder sends them now)."""
        if not due:
            return
        now = self.clock.now()
        until = now + self.options.lease
        leases = [(d.id, d.lease_owner) for tx in due for d in tx.deliveries]
        lost = set(await self.runner.write(self.runner.repo.renew_leases, now, until, leases))
        for tx in due:
            tx.lease_until = until
            if not lost or not lost.intersection(d.id for d in tx.deliveries):
                continue
            gone = [d for d in tx.deliveries if d.id in lost]
            if tx.sending_since is None:
                tx.deliveries = [d for d in tx.deliveries if d.id not in lost]
                LEASES_LOST.labels(stage="waiting").inc(len(gone))
                log.warning("lost the lease of %d deliveries of %s before sending them; "
                            "not sent here", len(gone), tx.message.id,
                            extra={"action": "lease_lost", "queue_id": tx.message.id})
            else:
                log.warning("lost the lease of %d deliveries of %s while sending them",
                            len(gone), tx.message.id,
                            extra={"action": "lease_lost", "queue_id": tx.message.id})

    async def _still_leased(self, tx: Transaction) -> bool:
        """Whether ``tx`` may be sent: it keeps the deliveries whose lease is still ours.

        The heartbeat keeps leases fresh; one it has not renewed in time (the store was
        busy or unreachable) is renewed here first, and not sent if that fails.
        """
        if tx.lease_until - self.clock.now() < self._heartbeat_period:
            try:
                await self._renew([tx])
            except Exception:
                log.exception("could not renew the leases of %s; not sent now", tx.message.id,
                              extra={"action": "lease_error", "queue_id": tx.message.id})
                return False
        return bool(tx.deliveries)

    # -- outcomes -----------------------------------------------------------------------

    def _add_outcomes(self, outcomes: list[Outcome]) -> None:
        self._outcomes.extend(outcomes)
        self._signal.set()


def _then(render: Callable[[], bytes], sign: Callable[[bytes], bytes]) -> bytes:
    """A copy rendered, then signed over its final bytes."""
    return sign(render())


def _unmarked_ses_ids(raw: bytes, instance_id: str) -> list[str]:
    """An Amazon SES bounce mail's Message-IDs, unless our marker names the alias."""
    if returned_alias(raw, instance_id) is not None:
        return []
    return ses_message_ids(raw)


def _returned_bounce(tx: Transaction) -> bool:
    """A bounce that came back to one of our SRS addresses, relayed to the original
    sender (not a notice of our own, nor mail with a sender: those go as they are)."""
    message = tx.message
    return (tx.mailing_list.id == RELAYED and message.protocol != NOTICE_PROTOCOL
            and message.mail_from.strip() in ("", "<>"))


def _reply(recipient: str, error: SmtpReplyError) -> RecipientReply:
    """A recipient's answer from an error: its code, enhanced status and reason."""
    return RecipientReply(recipient, *recipient_reply(error))


def _chunks(group: list[Delivery], mailing_list: MailingList, size: int
            ) -> Iterator[list[Delivery]]:
    """A group's transactions: at most ``size`` recipients each, one for a personalized
    list (each copy is its member's own)."""
    step = 1 if mailing_list.personalize else size
    for start in range(0, len(group), step):
        yield group[start:start + step]


def _orphaned(group: list[Delivery]) -> list[Outcome]:
    """Claimed deliveries whose list or message is gone: failed, and logged."""
    for d in group:
        log.info("fail %s to=<%s>: list or message deleted", d.message_id, d.recipient,
                 extra={"action": "failed", "queue_id": d.message_id,
                        "recipient": d.recipient, "reply": "list or message deleted"})
    return [Outcome(d.id, DeliveryStatus.FAILED, "list or message deleted",
                    message_id=d.message_id, lease=d.lease_owner) for d in group]


def _note_attempt(tx: Transaction, outcomes: list[Outcome], now: float) -> None:
    """Count what the attempt delivered, and log it (one line per recipient that was not
    delivered, one per reply for those delivered: a transaction's copies share it).

    Per transaction, not per delivery, unless the log is on (``log_level`` INFO).
    """
    message = tx.message
    delivered_count = sum(1 for o in outcomes if o.status is DeliveryStatus.DELIVERED)
    if delivered_count:
        QUEUE_SECONDS.observe(max(now - message.received_at, 0.0))
        if tx.mailing_list.kind is ListKind.ALIAS and tx.mailing_list.id != RELAYED:
            FORWARDS.inc(delivered_count)
    if not log.isEnabledFor(logging.INFO):
        return
    delivered: dict[str, list[str]] = {}
    for delivery, outcome in zip(tx.deliveries, outcomes, strict=True):
        if outcome.status is DeliveryStatus.DELIVERED:
            delivered.setdefault(outcome.reply, []).append(delivery.recipient)
            continue
        verb = "defer" if outcome.status is DeliveryStatus.DEFERRED else "fail"
        log.info("%s %s message-id=%s from=<%s> to=<%s> route=%s attempt=%d: %s", verb,
                 message.id, message.header_id or "-", message.mail_from, delivery.recipient,
                 tx.route, delivery.attempts + 1, outcome.reply,
                 extra={"action": outcome.status.value, "queue_id": message.id,
                        "message_id": message.header_id, "sender": message.mail_from,
                        "recipient": delivery.recipient, "route": tx.route,
                        "reply": outcome.reply})
    for reply, rcpts in delivered.items():
        log.info("deliver %s message-id=%s from=<%s> to=%s route=%s: %s", message.id,
                 message.header_id or "-", message.mail_from, ",".join(rcpts), tx.route,
                 reply, extra={"action": "delivered", "queue_id": message.id,
                               "message_id": message.header_id, "sender": message.mail_from,
                               "recipient": ",".join(rcpts), "route": tx.route,
                               "reply": reply})
