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
import re
import secrets
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import formatdate, make_msgid
from typing import Protocol

from mailflow import headers
from mailflow.clock import Clock
from mailflow.ids import new_message_id
from mailflow.model import Event, InboundMessage
from mailflow.services.commit import content_digest
from mailflow.srs import Srs

log = logging.getLogger(__name__)

MAX_PENDING = 1000       # failures waiting for their notice
MAX_REMEMBERED = 10_000  # messages and senders the duplicate and rate checks remember
HOUR = 3600.0
CODES = re.compile(r"^\s*([245]\d\d)(?:[ -]+([245]\.\d{1,3}\.\d{1,3}))?")


class Committer(Protocol):
    async def commit(self, message: InboundMessage, data: bytes,
                     events: Sequence[Event] = ()) -> None: ...


@dataclass(frozen=True, slots=True)
class Failure:
    """One alias forward that failed for good: what the notice is built from."""

    message: InboundMessage
    alias: str
    replies: tuple[str, ...]  # the final replies, one per failed target
    header: bytes             # the header section of the copy that was sent
    expired: bool             # given up after max_delivery_age (else refused)
    at: float


def wants_notice(message: InboundMessage, header: bytes) -> bool:
    """Whether the sender of ``message`` may be told of a failure at all."""
    sender = message.mail_from.strip()
    local, at, _ = sender.rpartition("@")
    if not at or not local or local.lower() == "mailer-daemon":
        return False
    return all(v.split("(")[0].strip().lower() == "no"
               for v in headers.field_values(header, "Auto-Submitted"))


def status_of(reply: str) -> tuple[str, str]:
    """(``Status``, ``Diagnostic-Code``) of a final reply, its codes only."""
    found = CODES.match(reply)
    if found is None:
        return "5.0.0", "smtp; 554 5.0.0"
    code, enhanced = found.group(1), found.group(2)
    if enhanced is None or enhanced[0] != code[0]:
        enhanced = f"{code[0]}.0.0"
    status = enhanced if code[0] == "5" else "5.4.7"  # a 4xx at the end: expired
    return status, f"smtp; {code} {enhanced}"


def failure_notice(failure: Failure, hostname: str) -> bytes:
    """The RFC 3464 report (``multipart/report; report-type=delivery-status``)."""
    message = failure.message
    alias = headers.header_safe(failure.alias)
    sender = headers.header_safe(message.mail_from.strip())
    host = headers.header_safe(hostname)
    boundary = f"=_mailflow_{secrets.token_hex(12)}"
    now = formatdate(failure.at)
    why = (f"gave up after trying for {max(1, round((failure.at - message.received_at) / 86400))}"
           " day(s)" if failure.expired else "was refused by the next mail server")
    statuses = [status_of(r) for r in failure.replies] or [("5.0.0", "smtp; 554 5.0.0")]
    status, diagnostic = statuses[0]
    fields = [
        f"From: Mail Delivery System <MAILER-DAEMON@{host}>",
        f"To: <{sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {now}",
        f"Message-ID: {make_msgid('dsn', domain=host)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\n\tboundary="{boundary}"',
    ]
    original_id = headers.field_values(failure.header, "Message-ID")
    if original_id and re.fullmatch(r"<[^<>\s]{1,900}>", original_id[0]):
        fields += [f"In-Reply-To: {original_id[0]}", f"References: {original_id[0]}"]
    text = (f"This is the mail system at {host}.\n\n"
            f"Your message to <{alias}> could not be delivered: the forward {why}.\n"
            f"The reply was {diagnostic.removeprefix('smtp; ')}.\n\n"
            f"The headers of your message are attached.\n")
    report = (f"Reporting-MTA: dns; {host}\n"
              f"Arrival-Date: {formatdate(message.received_at)}\n\n"
              f"Final-Recipient: rfc822; {alias}\n"
              f"Action: failed\n"
              f"Status: {status}\n"
              f"Diagnostic-Code: {diagnostic}\n"
              f"Last-Attempt-Date: {now}\n")
    original = failure.header.replace(b"\r\n", b"\n")
    parts = [
        f"--{boundary}\nContent-Type: text/plain; charset=us-ascii\n\n".encode()
        + text.encode("ascii", "replace"),
        f"--{boundary}\nContent-Type: message/delivery-status\n\n".encode()
        + report.encode("utf-8"),
        f"--{boundary}\nContent-Type: text/rfc822-headers\n\n".encode() + original,
    ]
    body = b"\n".join(parts) + f"\n--{boundary}--\n".encode()
    raw = "\n".join(fields).encode("utf-8") + b"\n\nThis is a MIME-encapsulated message.\n\n" \
        + body
    return raw.replace(b"\n", b"\r\n")


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
            peer="localhost", helo=self.hostname, protocol="LOCAL")
        await self.committer.commit(notice, raw, [Event(
            "notice", f"failure notice for {failure.message.id} via {failure.alias}",
            notice.id)])
        log.info("stored failure notice %s for %s (alias %s)", notice.id, failure.message.id,
                 failure.alias, extra={"action": "notice", "queue_id": notice.id})
