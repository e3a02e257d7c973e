"""Amazon SES ingress end to end: moto (server mode) for S3, SNS and SQS, a relay process,
signed SNS deliveries to its webhook, and the aiosmtpd sink the copies reach.

moto's SES receipt rules put nothing in S3, so each test puts the mail in S3 itself and
announces it with a ``Received`` notification shaped like AWS's documented example,
signed by a test key whose certificate a loopback server serves.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from mailflow.testing.aws import MotoServer, SnsSigner, received_notification, topic_arn
from mailflow.testing.factories import make_message
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink

SENDER = "poster@outside.test"


@dataclass
class SesSetup:
    relay: RelayProcess
    moto: MotoServer
    signer: SnsSigner
    bucket: str
    topic: str
    queue_url: str

    @property
    def s3(self) -> Any:
        return self.moto.client("s3")

    @property
    def sqs(self) -> Any:
        return self.moto.client("sqs")

    def post(self, message: dict[str, Any]) -> httpx.Response:
        # As SNS (and moto) send it: JSON, with a text/plain content type.
        return httpx.post(f"http://127.0.0.1:{self.relay.http_port}/v1/ingress/sns",
                          content=json.dumps(message),
                          headers={"Content-Type": "text/plain; charset=UTF-8"}, timeout=30)

    def mail_in_s3(self, to: str, *extra: str) -> tuple[str, dict[str, Any]]:
        """Put a message for ``to`` in S3 as SES would; its SES id and notification."""
        ses_id = uuid.uuid4().hex
        self.s3.put_object(Bucket=self.bucket, Key=f"inbound/{ses_id}",
                           Body=make_message(to))
        return ses_id, self.received(ses_id, [to, *extra])

    def received(self, ses_id: str, recipients: list[str], source: str = SENDER,
                 **kwargs: Any) -> dict[str, Any]:
        return received_notification(ses_id, source, recipients, bucket=self.bucket,
                                     key=f"inbound/{ses_id}", topic=self.topic, **kwargs)

    def audit(self, ses_id: str) -> dict[str, str]:
        head = self.s3.head_object(Bucket=self.bucket, Key=f"inbound/{ses_id}")
        return dict(head["Metadata"])

    def queue_empty(self, timeout: float = 20.0) -> None:
        """Wait until the queue holds no message, visible or in flight."""
        deadline = time.monotonic() + timeout
        while True:
            attributes = self.sqs.get_queue_attributes(
                QueueUrl=self.queue_url, AttributeNames=[
                    "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
            )["Attributes"]
            if not any(int(value) for value in attributes.values()):
                return
            assert time.monotonic() < deadline, f"queue not emptied: {attributes}"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def ses(make_module_relay: Callable[..., RelayProcess], moto: MotoServer,
        signer: SnsSigner) -> SesSetup:
    name = uuid.uuid4().hex[:12]
    s3, sns, sqs = moto.client("s3"), moto.client("sns"), moto.client("sqs")
    bucket = f"mail-{name}"
    s3.create_bucket(Bucket=bucket)
    topic = sns.create_topic(Name=f"inbound-{name}")["TopicArn"]
    queue_url = sqs.create_queue(QueueName=f"inbound-{name}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"]
                                         )["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    relay = make_module_relay(
        sns_topics=topic, sns_cert_url_pattern=signer.cert_url_pattern, sqs_queues=queue_url,
        sqs_wait_time="1", s3_fetch_attempts="2", s3_fetch_delay="0.05", s3_audit="true",
        aws_timeout="5", poll_interval="0.2", recipient_cache_ttl="0")
    relay.env.update(moto.env)
    relay.start()
    return SesSetup(relay, moto, signer, bucket, topic, queue_url)


def test_webhook_takes_mail_from_s3_once(ses: SesSetup, module_sink: SmtpSink) -> None:
    address, members = ses.relay.fresh_list(members=2)
    ses_id, note = ses.mail_in_s3(address, "nobody@example.test", "someone@elsewhere.test")
    response = ses.post(ses.signer.notification(ses.topic, note))
    assert response.status_code == 200, response.text
    [copy] = module_sink.wait_for_copies(members)
    assert sorted(copy.rcpt_tos) == members
    assert (b"X-MailFlow-SES-Verdicts: spam=PASS; virus=PASS; spf=PASS; dkim=PASS; "
            b"dmarc=GRAY\r\n") in copy.content
    assert b"Received: from amazonses.com (unknown)\r\n\tby relay.test (MailFlow Relay) with SES" \
        in copy.content
    audit = ses.audit(ses_id)
    assert audit["mailflow-status"] == "delivered"
    assert audit["mailflow-invalid-recipients"] == "nobody@example.test"
    assert audit["mailflow-processed-at"].endswith("Z")
    # SNS delivers the same notification again: acknowledged, no second copy.
    assert ses.post(ses.signer.notification(ses.topic, note)).status_code == 200
    ses.relay.wait_settled()
    assert len(module_sink.wait_for_copies(members, timeout=0)) == 1


def test_sqs_path_through_moto_sns(ses: SesSetup, module_sink: SmtpSink) -> None:
    address, members = ses.relay.fresh_list(members=2)
    _, note = ses.mail_in_s3(address)
    # moto's SNS puts its signed envelope in the queue, as SNS -> SQS does.
    ses.moto.client("sns").publish(TopicArn=ses.topic, Message=json.dumps(note))
    [copy] = module_sink.wait_for_copies(members)
    assert sorted(copy.rcpt_tos) == members
    ses.queue_empty()
    # The same notification bare in the queue (raw delivery): deleted, no second copy.
    ses.sqs.send_message(QueueUrl=ses.queue_url, MessageBody=json.dumps(note))
    ses.queue_empty()
    ses.relay.wait_settled()
    assert len(module_sink.wait_for_copies(members, timeout=0)) == 1


def test_object_missing_at_first_then_present(ses: SesSetup, module_sink: SmtpSink) -> None:
    address, members = ses.relay.fresh_list(members=1)
    ses_id = uuid.uuid4().hex
    note = ses.received(ses_id, [address])
    response = ses.post(ses.signer.notification(ses.topic, note))
    assert response.status_code == 503  # SNS delivers it again later
    assert response.headers["content-type"] == "application/problem+json"
    ses.s3.put_object(Bucket=ses.bucket, Key=f"inbound/{ses_id}", Body=make_message(address))
    assert ses.post(ses.signer.notification(ses.topic, note)).status_code == 200
    assert len(module_sink.wait_for_copies(members)) == 1


def test_inline_content_of_an_sns_action(ses: SesSetup, module_sink: SmtpSink) -> None:
    address, members = ses.relay.fresh_list(members=1)
    note = received_notification(uuid.uuid4().hex, SENDER, [address],
                                 content=make_message(address, subject="inline"),
                                 topic=ses.topic)
    assert ses.post(ses.signer.notification(ses.topic, note)).status_code == 200
    [copy] = module_sink.wait_for_copies(members)
    assert b"Subject: inline" in copy.content


def test_virus_is_refused_and_audited(ses: SesSetup, module_sink: SmtpSink) -> None:
    address, members = ses.relay.fresh_list(members=1)
    ses_id, note = ses.mail_in_s3(address)
    note["receipt"]["virusVerdict"] = {"status": "FAIL"}
    assert ses.post(ses.signer.notification(ses.topic, note)).status_code == 200
    assert ses.audit(ses_id)["mailflow-status"] == "rejected"
    ses.relay.wait_settled()
    assert module_sink.wait_for_copies(members, timeout=0) == []


def test_blocked_sender_is_audited(ses: SesSetup, module_sink: SmtpSink) -> None:
    address, members = ses.relay.fresh_list(members=1)
    spammer = f"spammer-{uuid.uuid4().hex[:6]}@outside.test"
    added = ses.relay.cli("block", "add", spammer, "--for", address)
    assert added.returncode == 0, added.stderr
    ses_id = uuid.uuid4().hex
    ses.s3.put_object(Bucket=ses.bucket, Key=f"inbound/{ses_id}", Body=make_message(address))
    note = ses.received(ses_id, [address], source=spammer)
    assert ses.post(ses.signer.notification(ses.topic, note)).status_code == 200
    audit = ses.audit(ses_id)
    assert (audit["mailflow-status"], audit["mailflow-blocked-sender"]) == ("blocked", spammer)
    ses.relay.wait_settled()
    assert module_sink.wait_for_copies(members, timeout=0) == []


def test_a_held_post_is_audited_as_held(ses: SesSetup, module_sink: SmtpSink) -> None:
    address, members = ses.relay.fresh_list(members=1)
    updated = ses.relay.cli("list", "update", address, "--posting", "moderated",
                            "--non-member-action", "hold")
    assert updated.returncode == 0, updated.stderr
    ses_id, note = ses.mail_in_s3(address)
    assert ses.post(ses.signer.notification(ses.topic, note)).status_code == 200
    assert ses.audit(ses_id)["mailflow-status"] == "held"
    held = json.loads(ses.relay.cli("held", "ls", "--list", address, "--json").stdout)
    assert len(held) == 1
    ses.relay.wait_settled()
    assert module_sink.wait_for_copies(members, timeout=0) == []


def refused_counts(ses: SesSetup) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{ses.relay.http_port}/metrics", timeout=10).text
    counts = {}
    for line in text.splitlines():
        if line.startswith("mailflow_sns_refused_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('"')[1]] = float(value)
    return counts


def test_forged_messages_are_refused(ses: SesSetup, module_sink: SmtpSink) -> None:
    address, members = ses.relay.fresh_list(members=1)
    _, note = ses.mail_in_s3(address)
    genuine = ses.signer.notification(ses.topic, note)
    other_host = ses.signer.cert_url.replace("127.0.0.1", "127.0.0.2")
    forgeries = {
        "signature": {**genuine, "Message": genuine["Message"].replace(SENDER,
                                                                      "evil@outside.test")},
        "certificate": ses.signer.notification(ses.topic, note, cert_url=other_host),
        "topic": ses.signer.notification(topic_arn("elsewhere"), note),
        "stale": ses.signer.notification(ses.topic, note, age=2 * 3600),
    }
    before = refused_counts(ses)
    for reason, message in forgeries.items():
        response = ses.post(message)
        assert response.status_code == 403, (reason, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    after = refused_counts(ses)
    for reason in forgeries:
        assert after.get(reason, 0) == before.get(reason, 0) + 1, reason
    assert "refused an SNS message from 127.0.0.1: topic" in ses.relay.log()
    ses.relay.wait_settled()
    assert module_sink.wait_for_copies(members, timeout=0) == []


def test_subscription_confirmed_only_for_allowed_topics(ses: SesSetup) -> None:
    token = uuid.uuid4().hex
    response = ses.post(ses.signer.subscription_confirmation(ses.topic, token))
    assert response.status_code == 200
    assert any(token in path for path in ses.signer.seen("/confirm?"))
    stranger = uuid.uuid4().hex
    response = ses.post(ses.signer.subscription_confirmation(topic_arn("elsewhere"), stranger))
    assert response.status_code == 403
    assert not any(stranger in path for path in ses.signer.seen("/confirm?"))
