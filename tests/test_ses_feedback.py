"""SES Bounce, Complaint and Delivery notifications applied to the deliveries SES took,
on SQLite and PostgreSQL.  The notifications are AWS's documented examples; the
deliveries are sent by the real scheduler through an egress that answers as SES does
(a MessageId per call), so the ids are stored the way production stores them."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from mailflow.backoff import RetryPolicy
from mailflow.blobs import BlobStore, content_hash
from mailflow.clock import SystemClock
from mailflow.errors import InvalidInput
from mailflow.model import FeedbackKind, InboundMessage, RecipientReply, SentCopy
from mailflow.services.commit import IngestBatch, store_batch
from mailflow.services.processor import expand_received
from mailflow.services.scheduler import Scheduler, SchedulerOptions
from mailflow.services.ses_feedback import SesFeedback
from mailflow.store import Engines, StoreRunner
from mailflow.testing.factories import make_list

SES_ID = "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000"
MAIL = {"timestamp": "2016-01-27T14:59:38.237Z", "source": "john@example.com",
        "sourceArn": "arn:aws:ses:us-east-1:123456789012:identity/john@example.com",
        "sourceIp": "127.0.3.0", "sendingAccountId": "123456789012",
        "messageId": SES_ID,
        "destination": ["jane@example.com", "mary@example.com", "richard@example.com"],
        "headersTruncated": False}

BOUNCE = {
    "notificationType": "Bounce",
    "bounce": {
        "bounceType": "Permanent", "reportingMTA": "dns; email.example.com",
        "bouncedRecipients": [{"emailAddress": "jane@example.com", "status": "5.1.1",
                               "action": "failed",
                               "diagnosticCode": "smtp; 550 5.1.1 <jane@example.com>... User"}],
        "bounceSubType": "General", "timestamp": "2016-01-27T14:59:38.237Z",
        "feedbackId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa068a-000000",
        "remoteMtaIp": "127.0.2.0"},
    "mail": MAIL}

COMPLAINT = {
    "notificationType": "Complaint",
    "complaint": {
        "userAgent": "AnyCompany Feedback Loop (V0.01)",
        "complainedRecipients": [{"emailAddress": "richard@example.com"}],
        "complaintFeedbackType": "abuse", "arrivalDate": "2016-01-27T14:59:38.237Z",
        "timestamp": "2016-01-27T14:59:38.237Z",
        "feedbackId": "000001378603177f-18c07c78-fa81-4a58-9dd1-fedc3cb8f49a-000000"},
    "mail": MAIL}

DELIVERY = {
    "notificationType": "Delivery",
    "delivery": {
        "timestamp": "2016-01-27T14:59:38.237Z", "processingTimeMillis": 546,
        "recipients": ["mary@example.com"], "smtpResponse": "250 ok:  Message 64111812 accepted",
        "reportingMTA": "a8-70.smtp-out.amazonses.com", "remoteMtaIp": "127.0.2.0"},
    "mail": MAIL}


class SesLikeEgress:
    """Takes every copy and answers, as SES does, with one MessageId per call."""

    name = "ses-like"

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, mail_from: str, recipients: Sequence[str],
                   content: bytes) -> list[RecipientReply]:
        return [RecipientReply(r, 250, f"2.0.0 accepted as {SES_ID}", SES_ID)
                for r in recipients]


@pytest.fixture
def sent(engines: Engines, tmp_path: Path) -> Iterator[StoreRunner]:
    """jane, mary and richard of team@example.test each got a copy, SES id ``SES_ID``."""
    runner = StoreRunner(engines)
    blobs = BlobStore(tmp_path / "blobs")
    make_list(runner.repo, "team@example.test",
              ["jane@example.com", "Mary@Example.com", "richard@example.com"])
    data = b"From: john@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"
    digest = content_hash(data)
    now = SystemClock().now()
    store_batch(runner.repo, IngestBatch([InboundMessage(
        "m1", "john@example.com", ("team@example.test",), digest, len(data), now,
        "127.0.0.1", "c.test", "ESMTP")]), now, lambda: blobs.write_many([(digest, data)]))
    expand_received(runner.repo, now, 10)

    async def send_all() -> None:
        scheduler = Scheduler(runner, blobs, SesLikeEgress(), SystemClock(), SchedulerOptions(
            batch_size=100, max_recipients=50, concurrency=1, lease=60, owner="test",
            instance_id="abc", hostname="relay.test", poll_interval=0.05,
            retry=RetryPolicy(initial_delay=1, multiplier=1, max_delay=1, max_age=600)))
        await scheduler.start()
        try:
            for _ in range(200):
                if (await runner.read(runner.repo.delivery_counts)).get("delivered") == 3:
                    return
                await asyncio.sleep(0.02)
            raise AssertionError("the copies were not sent")
        finally:
            await scheduler.stop()

    asyncio.run(send_all())
    yield runner
    runner.close()


def rows(runner: StoreRunner) -> dict[str, tuple[str, str | None]]:
    return {r.recipient.lower(): (r.status, r.last_reply)
            for r in runner.repo.list_deliveries(10)}


def events(runner: StoreRunner, kind: str) -> list[str]:
    return [detail for _, k, detail in runner.repo.message_events("m1") if k == kind]


class Hooks:
    def __init__(self) -> None:
        self.bounced: list[list[str]] = []
        self.complained: list[list[str]] = []

    async def on_bounce(self, copies: Sequence[SentCopy]) -> None:
        self.bounced.append([c.recipient for c in copies])

    async def on_complaint(self, copies: Sequence[SentCopy]) -> None:
        self.complained.append([c.recipient for c in copies])


def feedback(runner: StoreRunner, hooks: Hooks) -> SesFeedback:
    return SesFeedback(runner, SystemClock(), on_bounce=hooks.on_bounce,
                       on_complaint=hooks.on_complaint)


def test_a_permanent_bounce_fails_its_delivery_with_the_diagnostic(
        sent: StoreRunner) -> None:
    hooks = Hooks()
    applied = asyncio.run(feedback(sent, hooks).handle(BOUNCE))
    assert (applied.kind, applied.ses_message_id) == (FeedbackKind.BOUNCE, SES_ID)
    reply = ("550 5.1.1 Amazon SES bounce (Permanent/General): "
             "smtp; 550 5.1.1 <jane@example.com>... User")
    assert rows(sent)["jane@example.com"] == ("failed", reply)
    assert {status for r, (status, _) in rows(sent).items() if r != "jane@example.com"} \
        == {"delivered"}
    assert events(sent, "bounce") == [reply]
    assert hooks.bounced == [["jane@example.com"]] and hooks.complained == []
    # SNS delivers at least once: the same notification again changes nothing.
    asyncio.run(feedback(sent, hooks).handle(BOUNCE))
    assert rows(sent)["jane@example.com"] == ("failed", reply)


def test_a_transient_bounce_is_recorded_and_leaves_the_delivery_delivered(
        sent: StoreRunner) -> None:
    hooks = Hooks()
    transient = copy.deepcopy(BOUNCE)
    transient["bounce"].update(bounceType="Transient", bounceSubType="MailboxFull")
    transient["bounce"]["bouncedRecipients"][0].update(status="4.2.2",
                                                       diagnosticCode="smtp; 452 full")
    asyncio.run(feedback(sent, hooks).handle(transient))
    assert rows(sent)["jane@example.com"][0] == "delivered"
    assert events(sent, "bounce") == [
        "450 4.2.2 Amazon SES bounce (Transient/MailboxFull): smtp; 452 full"]
    assert hooks.bounced == []


def test_a_complaint_is_recorded_and_handed_to_the_suppression_hook(
        sent: StoreRunner) -> None:
    hooks = Hooks()
    applied = asyncio.run(feedback(sent, hooks).handle(COMPLAINT))
    assert [c.recipient for c in applied.matched] == ["richard@example.com"]
    assert hooks.complained == [["richard@example.com"]]
    assert events(sent, "complaint") == ["complaint (abuse) reported through Amazon SES"]
    assert rows(sent)["richard@example.com"][0] == "delivered"


def test_a_delivery_is_recorded_for_an_address_in_another_case(sent: StoreRunner) -> None:
    # Configuration-set event publishing says eventType where identities say
    # notificationType; mary was sent to as Mary@Example.com.
    published = {("eventType" if k == "notificationType" else k): v
                 for k, v in DELIVERY.items()}
    applied = asyncio.run(feedback(sent, Hooks()).handle(published))
    assert [c.recipient for c in applied.matched] == ["Mary@Example.com"]
    assert events(sent, "delivery") == [
        "delivered by Amazon SES (a8-70.smtp-out.amazonses.com): "
        "250 ok: Message 64111812 accepted"]


def test_a_notification_for_a_copy_not_ours_is_ignored(sent: StoreRunner) -> None:
    other = copy.deepcopy(BOUNCE)
    other["mail"]["messageId"] = "0000000000000000-other"
    applied = asyncio.run(feedback(sent, Hooks()).handle(other))
    assert applied.matched == ()
    assert rows(sent)["jane@example.com"][0] == "delivered"


@pytest.mark.parametrize(("notification", "problem"), [
    ({"notificationType": "Received", "mail": MAIL}, "not an SES Bounce"),
    ({**BOUNCE, "mail": {}}, "without mail.messageId"),
    ({"notificationType": "Bounce", "mail": MAIL}, "without its 'bounce' object"),
    ({**BOUNCE, "bounce": {"bounceType": "Permanent", "bouncedRecipients": []}},
     "names no recipient"),
])
def test_a_malformed_notification_is_invalid_input(
        notification: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        asyncio.run(SesFeedback(None, SystemClock()).handle(notification))  # type: ignore[arg-type]
