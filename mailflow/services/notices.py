"""Failure notices: an RFC 3464 report to the sender of a forward that failed for good.

When a copy forwarded by an alias fails permanently (a 5xx reply) or expires
(``max_delivery_age``), the scheduler reports it here (:meth:`FailureNotices.report`,
synchronous and cheap: the filters and the rate limit); the notice itself is built
and stored later, by :meth:`FailureNotices.run`, off the send path.  It is a new
message the relay stores like any other (the group commit, so durable before it is
sent), addressed to the forward's SRS address: the processing chain relays it to the
original sender exactly as it would relay the destination's own bounce, with the null
sender (``pipeline/send/envelope.py``).

The notice names the alias, never its hidden target: ``Final-Recipient`` is the alias,
and the next hop's reply is reduced to its codes, as its text usually names the
target.  None is sent:

* for the null sender or a sender without ``@`` (a bounce is never bounced), nor for
  ``MAILER-DAEMON@…``;
* for a message with ``Auto-Submitted`` other than ``no`` (RFC 3834: auto-replies and
  other notices must not start a storm);
* twice for one message and alias (its targets may fail in several transactions);
* beyond ``per_hour`` notices to one sender in the last hour (``dsn_per_sender_per_hour``).

The state behind the last two is in memory and bounded: the most recent
:data:`MAX_REMEMBERED` messages and senders (a restart forgets them, so at worst a
sender gets one more notice per message).  Failures wait for their notice in a queue
of at most :data:`MAX_PENDING`; beyond it (a storm of failures) a failure is logged
and gets no notice.  A crash between a failure's outcome and its notice's commit loses
that notice; one before the outcome is written may repeat it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Protocol

from mailflow.clock import Clock
from mailflow.ids import new_message_id
from mailflow.model import Event, InboundMessage
from mailflow.pipeline.notice import NOTICE_PROTOCOL, Failure, failure_notice, wants_notice
from mailflow.services.commit import content_digest
from mailflow.srs import Srs

log = logging.getLogger(__name__)

MAX_PENDING = 1000       # failures waiting for their notice
MAX_REMEMBERED = 10_000  # messages and senders the duplicate and rate checks remember
HOUR = 3600.0


class Committer(Protocol):
    async def commit(self, message: InboundMessage, data: bytes,
                     events: Sequence[Event] = ()) -> None: ...


class SentNotices:
    """Which (message, alias) pairs got a notice, and when each sender last got some;
    both bounded (least recently seen first out)."""

    def __init__(self, per_hour: int, limit: int = MAX_REMEMBERED) -> None:
        self.per_hour = per_hour
        self.limit = limit
        self._pairs: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._senders: OrderedDict[str, deque[float]] = OrderedDict()

    def admit(self, message_id: str, alias: str, sender: str, now: float) -> bool:
        pair = (message_id, alias)
        if pair in self._pairs:
            return False
        times = self._senders.get(sender)
        if times is None:
            times = self._senders[sender] = deque(maxlen=max(1, self.per_hour))
        self._senders.move_to_end(sender)
        while times and times[0] <= now - HOUR:
            times.popleft()
        if len(times) >= self.per_hour:
            return False
        times.append(now)
        self._pairs[pair] = None
        for table in (self._pairs, self._senders):
            while len(table) > self.limit:
                table.popitem(last=False)
        return True


class FailureNotices:
    def __init__(self, committer: Committer, clock: Clock, srs: Srs, hostname: str,
                 per_hour: int) -> None:
        self.committer = committer
        self.clock = clock
        self.srs = srs
        self.hostname = hostname
        self.sent = SentNotices(per_hour)
        self._pending: asyncio.Queue[Failure] = asyncio.Queue(MAX_PENDING)

    def report(self, failure: Failure) -> None:
        """Take note of a failed forward; its notice is stored by :meth:`run`."""
        message = failure.message
        if not wants_notice(message, failure.header):
            return
        sender = message.mail_from.strip().lower()
        if not self.sent.admit(message.id, failure.alias, sender, failure.at):
            log.info("no failure notice for %s to <%s>: one was sent, or the sender's "
                     "hourly limit is reached", message.id, sender,
                     extra={"action": "notice_limited", "queue_id": message.id})
            return
        try:
            self._pending.put_nowait(failure)
        except asyncio.QueueFull:
            log.warning("failure notice for %s dropped: %d notices wait already",
                        message.id, MAX_PENDING,
                        extra={"action": "notice_dropped", "queue_id": message.id})

    async def run(self) -> None:
        while True:
            failure = await self._pending.get()
            try:
                await self._store(failure)
            except Exception:  # one notice must not stop the others
                log.exception("storing the failure notice for %s failed", failure.message.id,
                              extra={"action": "notice_error",
                                     "queue_id": failure.message.id})

    async def _store(self, failure: Failure) -> None:
        domain = failure.alias.rpartition("@")[2]
        now = self.clock.now()
        # Addressed as the destination's own bounce would be: the processing chain
        # relays it to the original sender (or, for SRS1, to the first forwarder).
        recipient = self.srs.forward(failure.message.mail_from.strip(), domain, now)
        raw = failure_notice(failure, self.hostname)
        notice = InboundMessage(
            id=new_message_id(now), mail_from="", rcpt_tos=(recipient,),
            blob=await content_digest(raw), size=len(raw), received_at=now,
            peer="localhost", helo=self.hostname, protocol=NOTICE_PROTOCOL)
        await self.committer.commit(notice, raw, [Event(
            "notice", f"failure notice for {failure.message.id} via {failure.alias}",
            notice.id)])
        log.info("stored failure notice %s for %s (alias %s)", notice.id, failure.message.id,
                 failure.alias, extra={"action": "notice", "queue_id": notice.id})
