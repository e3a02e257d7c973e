"""Mail received by Amazon SES: fetched from S3 (or taken inline) and accepted like SMTP.

SES has already said 250 to the sender; what is left is to make the message ours with
the same accept service and chains as SMTP, and only then let the notification go (a
2xx to SNS, a delete in SQS).  Whatever fails before the durable commit is a
:class:`~mailflow.errors.TemporaryFailure`: SNS and SQS deliver the notification again.
A refusal for good (no recipient of ours, a blocked sender, a virus) is final: it is
acknowledged, remembered, and written on the S3 object when ``s3_audit`` is on.

The same SES message may come twice (SNS retries, SQS redelivers): what became of each
``mail.messageId`` is stored, and a second arrival is acknowledged without a copy.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mailflow.clock import Clock
from mailflow.errors import (
    PermanentFailure,
    SenderBlocked,
    StorageUnavailable,
    TemporaryFailure,
    UnknownDomain,
)
from mailflow.ingress.aws import METADATA_BYTES, AwsClients, ObjectUnavailable
from mailflow.ingress.ses_notification import (
    BadNotification,
    ReceivedMail,
    notification_kind,
    received_mail,
)
from mailflow.metrics import SES_RECEIVED
from mailflow.model import Envelope, MessageStatus
from mailflow.services.accept import AcceptService, count_refusal
from mailflow.store.runner import StoreRunner

log = logging.getLogger(__name__)

PROTOCOL = "SES"
SES_HOST = "amazonses.com"
FEEDBACK_KINDS = frozenset({"Bounce", "Complaint", "Delivery"})

#: Applies a ``Bounce``, ``Complaint`` or ``Delivery`` notification (the SES egress's).
FeedbackHandler = Callable[[Mapping[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SesIngestOptions:
    max_message_size: int
    fetch_attempts: int
    fetch_delay: float
    refuse_virus: bool
    audit: bool
    delete_blocked: bool


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one received message: ``delivered`` (taken), ``blocked``,
    ``rejected``; and the recipients refused on the way."""

    status: str
    message_id: str = ""
    invalid: tuple[str, ...] = ()
    blocked_sender: str = ""


class SesIngest:
    """Takes SES ``Received`` notifications."""

    def __init__(self, service: AcceptService, runner: StoreRunner, aws: AwsClients | None,
                 clock: Clock, options: SesIngestOptions,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """``aws``: S3 access, needed for S3 actions (a notification that needs it
        without it is a temporary failure that the log explains)."""
        self.service = service
        self.runner = runner
        self.aws = aws
        self.clock = clock
        self.options = options
        self.sleep = sleep
        self._busy: dict[str, tuple[asyncio.Lock, int]] = {}  # lock, its users

    async def received(self, notification: Mapping[str, Any]) -> Outcome:
        """Take the message a notification announces, or refuse it for good; raise
        :class:`TemporaryFailure` when the notification must come again."""
        mail = received_mail(notification)
        key = mail.ses_message_id
        lock, users = self._busy.get(key, (asyncio.Lock(), 0))
        self._busy[key] = (lock, users + 1)
        try:
            async with lock:  # the same message arriving twice at once is taken once
                return await self._received_once(mail)
        finally:
            lock, users = self._busy[key]
            if users == 1:
                del self._busy[key]
            else:
                self._busy[key] = (lock, users - 1)

    async def _received_once(self, mail: ReceivedMail) -> Outcome:
        earlier = await self.runner.read_on_ingest(
            "SES duplicate check", "cannot check for duplicates right now",
            self.runner.repo.ses_outcome, mail.ses_message_id)
        if earlier is not None:
            log.info("SES message %s arrived again: %s before as %s, acknowledged",
                     mail.ses_message_id, earlier[0], earlier[1] or "-",
                     extra={"action": "ses_duplicate", "queue_id": earlier[1]})
            SES_RECEIVED.labels(status="duplicate").inc()
            return Outcome(earlier[0], earlier[1])
        outcome = await self._take(mail)
        try:
            await self.runner.write(self.runner.repo.note_ses_outcome, mail.ses_message_id,
                                    outcome.status, outcome.message_id, self.clock.now())
        except Exception:  # the message is durable: a redelivery may copy it once more
            log.exception("cannot record SES message %s as handled", mail.ses_message_id,
                          extra={"action": "ses_record_failed"})
        SES_RECEIVED.labels(status=outcome.status).inc()
        log.info("SES message %s: %s%s", mail.ses_message_id, outcome.status,
                 f" as {outcome.message_id}" if outcome.message_id else "",
                 extra={"action": "ses_received", "queue_id": outcome.message_id})
        if mail.s3 is not None and self.aws is not None:
            await self._audit(mail, outcome)
        return outcome

    async def _take(self, mail: ReceivedMail) -> Outcome:
        if self.options.refuse_virus and mail.verdicts.get("virus") == "FAIL":
            return Outcome("rejected")
        taken, invalid, blocked = await self._recipients(mail)
        if not taken:
            return Outcome("blocked" if blocked and not invalid else "rejected",
                           invalid=tuple(invalid), blocked_sender=mail.source if blocked else "")
        # Our Received field then says "from amazonses.com ... with SES": SES took it over
        # SMTP (its own Received field is in the message), we took it from SES.
        envelope = Envelope(mail_from=mail.source, rcpt_tos=tuple(taken), helo=SES_HOST,
                            protocol=PROTOCOL)
        try:
            raw = mail.verdict_header() + await self._content(mail)
            stored = await self.service.submit_message(envelope, raw)
        except SenderBlocked:
            return Outcome("blocked", invalid=tuple(invalid), blocked_sender=mail.source)
        except PermanentFailure as error:
            log.info("SES message %s refused: %s", mail.ses_message_id, error.reason,
                     extra={"action": "ses_refused"})
            return Outcome("rejected", invalid=tuple(invalid))
        # A message a filter rule or a posting policy holds as a whole is stored held.
        held = stored.status is MessageStatus.HELD
        return Outcome("held" if held else "delivered", stored.id, tuple(invalid),
                       mail.source if blocked else "")

    async def _recipients(self, mail: ReceivedMail) -> tuple[list[str], list[str], list[str]]:
        """(taken, refused, refused for their sender) among the receipt's recipients;
        those of other domains are dropped: SES may receive for more than ours."""
        taken: list[str] = []
        invalid: list[str] = []
        blocked: list[str] = []
        for rcpt in mail.recipients:
            try:
                await self.service.check_recipient(rcpt, mail.source, count=False)
            except UnknownDomain:  # not a refusal: not ours to take or to count
                log.info("SES message %s: %s is not of our domains, dropped",
                         mail.ses_message_id, rcpt, extra={"action": "ses_foreign_recipient"})
            except PermanentFailure as error:
                count_refusal(error, mail.source, [rcpt])
                (blocked if isinstance(error, SenderBlocked) else invalid).append(rcpt)
            else:
                taken.append(rcpt)
        return taken, invalid, blocked

    async def _content(self, mail: ReceivedMail) -> bytes:
        if mail.content is not None:
            return mail.content
        assert mail.s3 is not None
        if self.aws is None:
            log.error("SES message %s is in S3 but the relay has no S3 client",
                      mail.ses_message_id, extra={"action": "ses_no_s3"})
            raise StorageUnavailable("cannot read the message from S3")
        delay = self.options.fetch_delay
        for attempt in range(1, self.options.fetch_attempts + 1):
            try:
                return await self.aws.get_object(mail.s3.bucket, mail.s3.key,
                                                 self.options.max_message_size)
            except ObjectUnavailable as exc:
                log.info("SES message %s: s3://%s/%s unavailable (try %d of %d): %s",
                         mail.ses_message_id, mail.s3.bucket, mail.s3.key, attempt,
                         self.options.fetch_attempts, exc, extra={"action": "s3_fetch_retry"})
                if attempt < self.options.fetch_attempts:
                    await self.sleep(delay)
                    delay *= 2
        raise TemporaryFailure(f"s3://{mail.s3.bucket}/{mail.s3.key} cannot be read yet")

    async def _audit(self, mail: ReceivedMail, outcome: Outcome) -> None:
        """Write the outcome on the S3 object (``s3_audit``), and delete blocked mail
        (``s3_audit_delete_blocked``); a failure here is logged, the message stays ours."""
        assert mail.s3 is not None and self.aws is not None
        location = f"s3://{mail.s3.bucket}/{mail.s3.key}"
        try:
            if outcome.status == "blocked" and self.options.delete_blocked:
                await self.aws.delete_object(mail.s3.bucket, mail.s3.key)
            elif self.options.audit:
                await self.aws.add_metadata(mail.s3.bucket, mail.s3.key,
                                            audit_metadata(outcome, self.clock.now()))
        except Exception as exc:
            log.warning("cannot write the audit trail on %s: %s", location, exc,
                        extra={"action": "s3_audit_failed"})


def audit_metadata(outcome: Outcome, now: float) -> dict[str, str]:
    """The ``mailflow-*`` metadata of an S3 object (ASCII, as S3 requires; bounded)."""
    moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
    values = {
        "mailflow-status": outcome.status,
        "mailflow-processed-at": moment.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "mailflow-invalid-recipients": ",".join(outcome.invalid),
        "mailflow-blocked-sender": outcome.blocked_sender,
    }
    budget = METADATA_BYTES
    for name, value in values.items():
        ascii_value = value.encode("ascii", "backslashreplace").decode()[:budget // 2]
        values[name] = ascii_value
        budget -= len(ascii_value)
    return values


class SesNotifications:
    """Hands each SES notification to what handles its kind."""

    def __init__(self, ingest: SesIngest, feedback: FeedbackHandler | None = None) -> None:
        """``feedback``: applies ``Bounce``/``Complaint``/``Delivery`` notifications;
        without it they are logged and acknowledged."""
        self.ingest = ingest
        self.feedback = feedback

    async def handle(self, notification: Mapping[str, Any]) -> None:
        """Act on one notification; return when it may be acknowledged."""
        kind = notification_kind(notification)
        if kind == "Received":
            await self.ingest.received(notification)
        elif kind in FEEDBACK_KINDS and self.feedback is not None:
            await self.feedback(notification)
        elif kind in FEEDBACK_KINDS or kind == "AMAZON_SES_SETUP_NOTIFICATION":
            log.info("SES %s notification acknowledged, nothing to do with it", kind,
                     extra={"action": "ses_notification_ignored"})
        else:
            raise BadNotification(f"unknown SES notification type {kind[:40]!r}")
