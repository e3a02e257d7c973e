"""What a message sent to a list's bounce address says: who failed, for good or not,
and whether it is a complaint (an RFC 5965 feedback report).

Bounce formats are many and mostly not RFC 3464: **flufl.bounce** (GNU Mailman's own
detectors: DSN, Postfix, Exim, qmail, Exchange, Yahoo, AOL, ...) reads them.  Its
temporary failures are delays and warnings, its permanent ones failures.  A feedback
report is read here: ``Original-Rcpt-To`` and ``Removal-Recipient`` of its
``message/feedback-report`` part name the member who complained.
"""

from __future__ import annotations

import email
import email.policy
import logging
from dataclasses import dataclass, field
from email.message import Message
from email.utils import getaddresses

from mailflow import addresses

log = logging.getLogger(__name__)

MAX_BOUNCE_BYTES = 1024 * 1024  # larger "bounces" are read only as far as this


@dataclass(frozen=True, slots=True)
class BounceFindings:
    permanent: frozenset[str] = frozenset()
    temporary: frozenset[str] = frozenset()
    complaint: bool = False  # a feedback report (abuse, fraud, ...)
    complainants: frozenset[str] = field(default_factory=frozenset)

    @property
    def empty(self) -> bool:
        return not (self.permanent or self.temporary or self.complaint)


def _canonical(values: object) -> frozenset[str]:
    found = set()
    for value in values:  # type: ignore[attr-defined]
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        text = text.strip().strip("<>")
        if "@" in text:
            found.add(addresses.canonical(text))
    return frozenset(found)


def _feedback_report(message: Message) -> Message | None:
    if message.get_content_type() != "multipart/report":
        return None
    if message.get_param("report-type", "").lower() != "feedback-report":  # type: ignore[union-attr]
        return None
    for part in message.walk():
        if part.get_content_type() == "message/feedback-report":
            return part
    return None


def _complainants(report: Message) -> frozenset[str]:
    """The addresses a ``message/feedback-report`` part names (its fields are in its
    body, or parsed as a sub-message by the email package)."""
    payload = report.get_payload()
    fields: list[tuple[str, str]] = []
    if isinstance(payload, list):
        for sub in payload:
            if isinstance(sub, Message):
                fields += [(k, str(v)) for k, v in sub.items()]
    else:
        text = payload if isinstance(payload, str) else ""
        parsed = email.message_from_string(text.lstrip("\r\n"))
        fields += [(k, str(v)) for k, v in parsed.items()]
    wanted = [v for k, v in fields if k.lower() in ("original-rcpt-to", "removal-recipient")]
    return _canonical(address for _, address in getaddresses(wanted))


def read_bounce(raw: bytes) -> BounceFindings:
    """The findings of one bounce message; none when nothing could be read from it."""
    message = email.message_from_bytes(raw[:MAX_BOUNCE_BYTES], policy=email.policy.compat32)
    report = _feedback_report(message)
    if report is not None:
        return BounceFindings(complaint=True, complainants=_complainants(report))
    from flufl.bounce import all_failures  # its detectors: loaded by the first bounce only

    try:
        temporary, permanent = all_failures(message)
    except Exception:  # a detector tripping over a malformed bounce: nothing found
        log.warning("a bounce could not be read", exc_info=True,
                    extra={"action": "bounce_unreadable"})
        return BounceFindings()
    return BounceFindings(permanent=_canonical(permanent),
                          temporary=_canonical(temporary) - _canonical(permanent))
