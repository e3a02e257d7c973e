"""Amazon SES's word on the copies it took: ``Bounce``, ``Complaint`` and ``Delivery``.

SES sends these through SNS (the webhook) or SQS (the poller); their dispatcher hands
each notification, already parsed from JSON, to :meth:`SesFeedback.handle`.  Both SES
forms are read: the identity's notifications (``notificationType``) and a configuration
set's event publishing (``eventType``), whose fields are the same.

A notification names SES's MessageId (``mail.messageId``), which the SES egress stored
on every delivery it sent (``provider_message_id``), and the recipients it concerns;
together they find the deliveries.  Then:

* a **permanent bounce** fails the delivery (it was ``delivered`` to SES, the destination
  refused it), its last reply an SMTP-style line with the destination's diagnostic, and
  an event; ``on_bounce`` is told (the list's bounce score hooks in there);
* a **transient or undetermined bounce** is an event only: SES has retried already, and
  the delivery stays delivered;
* a **complaint** is an event, and ``on_complaint`` is told (unsubscribing and
  suppressing the member hooks in there);
* a **delivery** is an event with the destination's reply.

A notification about a copy the store does not know (sent by another system through the
same identity, or purged long ago) is logged and ignored: it is answered as handled, so
SNS and SQS do not deliver it again.  One that is not a well-formed SES notification
raises :class:`~mailflow.errors.InvalidInput`: the dispatcher drops it (retrying cannot
mend it).  Applying one twice repeats its event and changes nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mailflow.clock import Clock
from mailflow.errors import InvalidInput
from mailflow.headers import header_safe
from mailflow.model import FeedbackKind, ProviderFeedback, SentCopy
from mailflow.store.runner import StoreRunner

log = logging.getLogger(__name__)

Hook = Callable[[Sequence[SentCopy]], Awaitable[None]]

KINDS = {"bounce": FeedbackKind.BOUNCE, "complaint": FeedbackKind.COMPLAINT,
         "delivery": FeedbackKind.DELIVERY}
MAX_DETAIL = 500  # characters of a destination's text kept in a reply or event


@dataclass(frozen=True, slots=True)
class FeedbackApplied:
    """What one notification did: its kind, SES's MessageId, the deliveries it matched."""

    kind: FeedbackKind
    ses_message_id: str
    matched: tuple[SentCopy, ...]


class SesFeedback:
    def __init__(self, runner: StoreRunner, clock: Clock, *,
                 on_bounce: Hook | None = None, on_complaint: Hook | None = None) -> None:
        self.runner = runner
        self.clock = clock
        self.on_bounce = on_bounce
        self.on_complaint = on_complaint

    async def handle(self, notification: Mapping[str, Any]) -> FeedbackApplied:
        """Apply one SES ``Bounce``, ``Complaint`` or ``Delivery`` notification."""
        kind, ses_id, feedback = parse_notification(notification)
        copies = await self.runner.write(self.runner.repo.apply_provider_feedback,
                                         self.clock.now(), ses_id, feedback)
        if not copies:
            log.info("SES %s for %s matches no delivery here: ignored", kind.value, ses_id,
                     extra={"action": "ses_feedback_unknown"})
            return FeedbackApplied(kind, ses_id, ())
        for copy in copies:
            log.info("SES %s for delivery %d (%s)", kind.value, copy.delivery_id, ses_id,
                     extra={"action": f"ses_{kind.value}", "queue_id": copy.message_id})
        permanent = {f.recipient.lower() for f in feedback if f.fails}
        if kind is FeedbackKind.BOUNCE and permanent and self.on_bounce is not None:
            await self.on_bounce([c for c in copies if c.recipient.lower() in permanent])
        if kind is FeedbackKind.COMPLAINT and self.on_complaint is not None:
            await self.on_complaint(copies)
        return FeedbackApplied(kind, ses_id, tuple(copies))


def parse_notification(notification: Mapping[str, Any]
                       ) -> tuple[FeedbackKind, str, list[ProviderFeedback]]:
    """(kind, SES MessageId, one feedback per recipient) of a notification, or
    InvalidInput saying what is missing."""
    if not isinstance(notification, Mapping):
        raise InvalidInput("an SES notification is a JSON object")
    kind_name = notification.get("notificationType") or notification.get("eventType")
    kind = KINDS.get(str(kind_name).lower()) if isinstance(kind_name, str) else None
    if kind is None:
        raise InvalidInput(f"not an SES Bounce, Complaint or Delivery notification "
                           f"(type {str(kind_name)[:40]!r})")
    mail = notification.get("mail")
    ses_id = mail.get("messageId") if isinstance(mail, Mapping) else None
    if not isinstance(ses_id, str) or not ses_id:
        raise InvalidInput(f"SES {kind.value} notification without mail.messageId")
    body = notification.get(kind.value)
    if not isinstance(body, Mapping):
        raise InvalidInput(f"SES {kind.value} notification without its {kind.value!r} object")
    if kind is FeedbackKind.BOUNCE:
        feedback = _bounce(body)
    elif kind is FeedbackKind.COMPLAINT:
        feedback = _complaint(body)
    else:
        feedback = _delivery(body)
    if not feedback:
        raise InvalidInput(f"SES {kind.value} notification for {ses_id} names no recipient")
    return kind, ses_id, feedback


def _text(value: object) -> str:
    return header_safe(" ".join(str(value).split()))[:MAX_DETAIL] if value else ""


def _bounce(body: Mapping[str, Any]) -> list[ProviderFeedback]:
    bounce_type = _text(body.get("bounceType")) or "Undetermined"
    subtype = _text(body.get("bounceSubType")) or "General"
    permanent = bounce_type == "Permanent"
    feedback = []
    for entry in _entries(body.get("bouncedRecipients")):
        address = entry.get("emailAddress")
        if not isinstance(address, str) or not address:
            continue
        status = _text(entry.get("status")) or ("5.0.0" if permanent else "4.0.0")
        diagnostic = _text(entry.get("diagnosticCode"))
        code = "550" if permanent else "450"
        reply = f"{code} {status} Amazon SES bounce ({bounce_type}/{subtype})"
        feedback.append(ProviderFeedback(address, FeedbackKind.BOUNCE,
                                         f"{reply}: {diagnostic}" if diagnostic else reply,
                                         fails=permanent))
    return feedback


def _complaint(body: Mapping[str, Any]) -> list[ProviderFeedback]:
    feedback_type = _text(body.get("complaintFeedbackType")) or "unspecified"
    detail = f"complaint ({feedback_type}) reported through Amazon SES"
    return [ProviderFeedback(entry["emailAddress"], FeedbackKind.COMPLAINT, detail)
            for entry in _entries(body.get("complainedRecipients"))
            if isinstance(entry.get("emailAddress"), str) and entry["emailAddress"]]


def _delivery(body: Mapping[str, Any]) -> list[ProviderFeedback]:
    reply = _text(body.get("smtpResponse")) or "delivered"
    mta = _text(body.get("reportingMTA"))
    detail = f"delivered by Amazon SES{f' ({mta})' if mta else ''}: {reply}"
    recipients = body.get("recipients")
    if not isinstance(recipients, list):
        return []
    return [ProviderFeedback(r, FeedbackKind.DELIVERY, detail)
            for r in recipients if isinstance(r, str) and r]


def _entries(value: object) -> list[Mapping[str, Any]]:
    return [e for e in value if isinstance(e, Mapping)] if isinstance(value, list) else []
