"""What an SES notification says, read once into typed values.

SES announces received mail (``notificationType: "Received"``) and sending feedback
(``Bounce``, ``Complaint``, ``Delivery``) as JSON, either inside an SNS envelope (the SNS
webhook, an SQS queue subscribed to a topic) or bare (an SQS queue with raw message
delivery).  A notification that cannot be read is :class:`BadNotification`: no retry
will make it readable.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

VERDICTS = ("spam", "virus", "spf", "dkim", "dmarc")
_VERDICT_STATUS = re.compile(r"^[A-Z_]{1,32}$")
MAX_ID = 255


class BadNotification(Exception):
    """A notification that is not one SES sends, or lacks what it must carry."""


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    key: str


@dataclass(frozen=True, slots=True)
class ReceivedMail:
    """An SES ``Received`` notification: who sent what to whom, and where it lies."""

    ses_message_id: str
    source: str
    recipients: tuple[str, ...]
    verdicts: dict[str, str]
    s3: S3Location | None
    content: bytes | None  # an SNS action's inline message

    def verdict_header(self) -> bytes:
        """``X-MailFlow-SES-Verdicts: spam=PASS; virus=PASS; …``: SES's verdicts kept on
        the message for the lists' filters and for whoever reads it."""
        text = "; ".join(f"{name}={status}" for name, status in self.verdicts.items())
        return f"X-MailFlow-SES-Verdicts: {text}\r\n".encode() if text else b""


def notification_from_body(body: str, topics: frozenset[str] = frozenset()
                           ) -> dict[str, Any]:
    """The SES notification in an SQS message body: inside an SNS envelope, or bare.

    ``topics``: if given, an SNS envelope must come from one of them (the queue's own
    policy decides who may send to it; this narrows it to the topics configured).
    """
    data = _json_object(body, "the message body")
    if "notificationType" in data or "eventType" in data:
        return data
    if data.get("Type") == "Notification" and isinstance(data.get("Message"), str):
        if topics and data.get("TopicArn") not in topics:
            raise BadNotification(f"SNS topic {str(data.get('TopicArn'))[:200]!r} is not "
                                  "in sns_topics")
        return _json_object(data["Message"], "the SNS Message")
    raise BadNotification("neither an SES notification nor an SNS envelope of one")


def notification_kind(notification: Mapping[str, Any]) -> str:
    """``notificationType`` (receipt and identity notifications) or ``eventType``
    (configuration-set event publishing)."""
    kind = notification.get("notificationType", notification.get("eventType"))
    if not isinstance(kind, str):
        raise BadNotification("no notificationType")
    return kind


def received_mail(notification: Mapping[str, Any]) -> ReceivedMail:
    """Read a ``Received`` notification (AWS's documented shape)."""
    mail = _mapping(notification.get("mail"), "mail")
    receipt = _mapping(notification.get("receipt"), "receipt")
    ses_id = mail.get("messageId")
    if not isinstance(ses_id, str) or not 0 < len(ses_id) <= MAX_ID:
        raise BadNotification("mail.messageId is missing")
    source = mail.get("source", "")
    recipients = receipt.get("recipients")
    if not isinstance(source, str) or not isinstance(recipients, list) \
            or not all(isinstance(r, str) for r in recipients):
        raise BadNotification("mail.source or receipt.recipients is malformed")
    verdicts = {}
    for name in VERDICTS:
        verdict = receipt.get(f"{name}Verdict")
        status = verdict.get("status") if isinstance(verdict, dict) else None
        if isinstance(status, str) and _VERDICT_STATUS.match(status):
            verdicts[name] = status
    action = _mapping(receipt.get("action"), "receipt.action")
    kind = action.get("type")
    if kind == "S3":
        bucket, key = action.get("bucketName"), action.get("objectKey")
        if not isinstance(bucket, str) or not isinstance(key, str) or not bucket or not key:
            raise BadNotification("an S3 action without bucketName and objectKey")
        return ReceivedMail(ses_id, source, tuple(recipients), verdicts,
                            S3Location(bucket, key), None)
    if kind == "SNS":
        return ReceivedMail(ses_id, source, tuple(recipients), verdicts, None,
                            _inline_content(notification.get("content"),
                                            action.get("encoding", "UTF8")))
    raise BadNotification(f"receipt action {str(kind)[:40]!r}: expected S3 or SNS")


def _inline_content(content: object, encoding: object) -> bytes:
    if not isinstance(content, str):
        raise BadNotification("an SNS action without content")
    if encoding == "BASE64":
        try:
            return base64.b64decode(content, validate=True)
        except binascii.Error:
            raise BadNotification("content is not base64") from None
    return content.encode("utf-8", "surrogateescape")


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise BadNotification(f"{what} is not JSON") from None
    if not isinstance(data, dict):
        raise BadNotification(f"{what} is not a JSON object")
    return data


def _mapping(value: object, name: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise BadNotification(f"{name} is missing")
    return value
