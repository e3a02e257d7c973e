"""SNS signature checks and SES notification reading, without processes."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from mailflow.clock import SystemClock
from mailflow.config import SNS_CERT_URL_PATTERN, Settings
from mailflow.ingress.ses import Outcome, audit_metadata
from mailflow.ingress.ses_notification import (
    BadNotification,
    notification_from_body,
    received_mail,
)
from mailflow.ingress.sns_signature import ForgedMessage, SnsVerifier
from mailflow.testing.aws import SnsSigner, received_notification, topic_arn

TOPIC = topic_arn("inbound")


class Fetches:
    def __init__(self, pem: bytes) -> None:
        self.pem = pem
        self.urls: list[str] = []

    async def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        return self.pem


def verifier(signer: SnsSigner, fetch: Fetches | None = None) -> SnsVerifier:
    return SnsVerifier((TOPIC,), signer.cert_url_pattern, SystemClock(),
                       fetch or Fetches(signer.cert_pem))


@pytest.mark.parametrize("version", ["1", "2"])
async def test_both_signature_versions_verify(signer: SnsSigner, version: str) -> None:
    fetches = Fetches(signer.cert_pem)
    check = verifier(signer, fetches)
    await check.verify(signer.notification(TOPIC, {"a": 1}, version=version))
    await check.verify(signer.notification(TOPIC, "text", subject="with a subject",
                                           version=version))
    await check.verify(signer.subscription_confirmation(TOPIC, "tok"))
    assert fetches.urls == [signer.cert_url]  # fetched once, then cached


@pytest.mark.parametrize(("change", "reason"), [
    ({"Message": "tampered"}, "signature"),
    ({"Subject": "added after signing"}, "signature"),
    ({"Signature": "not base64!"}, "signature"),
    ({"Signature": ""}, "unsigned"),
    ({"SignatureVersion": "3"}, "unsigned"),
    ({"TopicArn": topic_arn("other")}, "topic"),
    ({"Type": "Surprise"}, "type"),
    ({"SigningCertURL": "http://127.0.0.2:1/cert.pem"}, "certificate"),
    ({"SigningCertURL": "https://sns.us-east-1.amazonaws.com.evil.test/x.pem"},
     "certificate"),
])
async def test_forgeries_are_refused(signer: SnsSigner, change: dict[str, str],
                                     reason: str) -> None:
    fetches = Fetches(signer.cert_pem)
    message = {**signer.notification(TOPIC, {"a": 1}), **change}
    with pytest.raises(ForgedMessage) as refused:
        await verifier(signer, fetches).verify(message)
    assert refused.value.reason == reason
    if reason in ("topic", "type", "unsigned", "certificate"):
        assert fetches.urls == []  # nothing fetched for a message refused on its face


@pytest.mark.parametrize("age", [3700.0, -3700.0])
async def test_stale_or_future_timestamp_is_refused(signer: SnsSigner, age: float) -> None:
    with pytest.raises(ForgedMessage) as refused:
        await verifier(signer).verify(signer.notification(TOPIC, "x", age=age))
    assert refused.value.reason == "stale"


async def test_signature_by_another_key_is_refused(signer: SnsSigner) -> None:
    with SnsSigner() as other:
        message = other.notification(TOPIC, "x", cert_url=signer.cert_url)
    with pytest.raises(ForgedMessage) as refused:
        await verifier(signer).verify(message)
    assert refused.value.reason == "signature"


def test_default_pattern_takes_only_sns_hosts() -> None:
    check = SnsVerifier((TOPIC,), Settings().sns_cert_url_pattern, SystemClock(), Fetches(b""))
    assert Settings().sns_cert_url_pattern == SNS_CERT_URL_PATTERN
    assert check.cert_url_allowed(
        "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem")
    assert check.cert_url_allowed(
        "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem")
    for url in ("http://sns.eu-west-1.amazonaws.com/a.pem",
                "https://sns.eu-west-1.amazonaws.com.evil.test/a.pem",
                "https://evil.test/sns.eu-west-1.amazonaws.com/a.pem",
                "https://sns.eu-west-1.amazonaws.com/a.pem?x=.pem"):
        assert not check.cert_url_allowed(url), url


def test_received_notification_read() -> None:
    s3 = received_mail(received_notification("id1", "a@b.test", ["l@example.test"],
                                             bucket="bkt", key="in/id1"))
    assert s3.s3 is not None and (s3.s3.bucket, s3.s3.key) == ("bkt", "in/id1")
    assert s3.verdict_header() == (b"X-MailFlow-SES-Verdicts: spam=PASS; virus=PASS; "
                                   b"spf=PASS; dkim=PASS; dmarc=GRAY\r\n")
    inline = received_mail(received_notification("id2", "a@b.test", ["l@example.test"],
                                                  content=b"Subject: x\r\n\r\nhi\r\n"))
    assert inline.content == b"Subject: x\r\n\r\nhi\r\n" and inline.s3 is None
    utf8 = received_notification("id3", "a@b.test", ["l@example.test"], content=b"")
    utf8["receipt"]["action"]["encoding"] = "UTF8"
    utf8["content"] = "Subject: \u00e9\r\n\r\n"
    assert received_mail(utf8).content == "Subject: \u00e9\r\n\r\n".encode()


def test_verdicts_that_are_not_tokens_are_left_out() -> None:
    notification = received_notification("id", "a@b.test", ["l@example.test"],
                                         bucket="b", key="k")
    notification["receipt"]["spamVerdict"] = {"status": "PASS\r\nBcc: x@y"}
    assert b"spam=" not in received_mail(notification).verdict_header()


@pytest.mark.parametrize("broken", [
    {"mail": {}},
    {"receipt": {"action": {"type": "Lambda"}}},
    {"receipt": {"action": {"type": "S3"}}},
    {"content": "!!", "receipt": {"action": {"type": "SNS", "encoding": "BASE64"}}},
])
def test_malformed_received_notifications(broken: dict[str, Any]) -> None:
    notification = received_notification("id", "a@b.test", ["l@example.test"],
                                         bucket="b", key="k")
    for part, value in broken.items():
        if isinstance(value, dict) and part in notification:
            for name, inner in value.items():
                notification[part][name] = inner
        else:
            notification[part] = value
    if "mail" in broken:
        del notification["mail"]["messageId"]
    with pytest.raises(BadNotification):
        received_mail(notification)


def test_sqs_bodies_bare_or_in_an_sns_envelope() -> None:
    bare = received_notification("id", "a@b.test", ["l@example.test"], bucket="b", key="k")
    assert notification_from_body(json.dumps(bare)) == bare
    envelope = {"Type": "Notification", "TopicArn": TOPIC, "Message": json.dumps(bare)}
    assert notification_from_body(json.dumps(envelope), frozenset({TOPIC})) == bare
    with pytest.raises(BadNotification):
        notification_from_body(json.dumps(envelope), frozenset({topic_arn("other")}))
    for body in ("not json", "[1]", json.dumps({"Type": "Notification"})):
        with pytest.raises(BadNotification):
            notification_from_body(body)


def test_audit_metadata_is_ascii_and_bounded() -> None:
    outcome = Outcome("rejected", invalid=tuple(f"x{i}@example.test" for i in range(500)),
                      blocked_sender="j\u00f6rg@b\u00fccher.test")
    metadata = audit_metadata(outcome, time.time())
    assert metadata["mailflow-status"] == "rejected"
    assert metadata["mailflow-processed-at"].endswith("Z")
    assert all(value.isascii() for value in metadata.values())
    assert sum(len(v) for v in metadata.values()) <= 1800
