"""The failure notice (RFC 3464 delivery status notification) the relay writes.

Shared by the relay's own notices (``services/notices.py``: an alias forward failed for
good) and the rewriting of bounces that come back to an SRS address
(``pipeline/send/bounce.py``): both name the alias, never its hidden target.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from email.utils import formatdate, make_msgid

from mailflow import headers
from mailflow.model import InboundMessage

NOTICE_PROTOCOL = "LOCAL"  # the protocol of the relay's own notices, as stored

CODES = re.compile(r"^\s*([245]\d\d)(?:[ -]+([245]\.\d{1,3}\.\d{1,3}))?")


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
    """The relay's own report of a forward that failed for good."""
    message = failure.message
    days = max(1, round((failure.at - message.received_at) / 86400))
    why = (f"gave up after trying for {days} day(s)" if failure.expired
           else "was refused by the next mail server")
    status, diagnostic = ([status_of(r) for r in failure.replies]
                          or [("5.0.0", "smtp; 554 5.0.0")])[0]
    return delivery_report(
        to=message.mail_from.strip(), alias=failure.alias, action="failed", status=status,
        diagnostic=diagnostic,
        explanation=f"could not be delivered: the forward {why}",
        arrival=message.received_at, at=failure.at, header=failure.header,
        hostname=hostname)


def delivery_report(*, to: str, alias: str, action: str, status: str, diagnostic: str,
                    explanation: str, arrival: float, at: float, header: bytes,
                    hostname: str) -> bytes:
    """An RFC 3464 report (``multipart/report; report-type=delivery-status``) for one
    alias, from ``MAILER-DAEMON@hostname``.  ``to`` empty: undisclosed recipients."""
    alias = headers.header_safe(alias)
    host = headers.header_safe(hostname)
    boundary = f"=_mailflow_{secrets.token_hex(12)}"
    now = formatdate(at)
    fields = [
        f"From: Mail Delivery System <MAILER-DAEMON@{host}>",
        f"To: <{headers.header_safe(to)}>" if to else "To: undisclosed-recipients:;",
        "Subject: " + ("Undelivered Mail Returned to Sender" if action == "failed"
                       else f"Delivery Status Notification ({action})"),
        f"Date: {now}",
        f"Message-ID: {make_msgid('dsn', domain=host)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\n\tboundary="{boundary}"',
    ]
    original_id = headers.field_values(header, "Message-ID")
    if original_id and re.fullmatch(r"<[^<>\s]{1,900}>", original_id[0]):
        fields += [f"In-Reply-To: {original_id[0]}", f"References: {original_id[0]}"]
    text = (f"This is the mail system at {host}.\n\n"
            f"Your message to <{alias}> {explanation}.\n"
            f"The reply was {diagnostic.removeprefix('smtp; ')}.\n\n"
            f"The headers of your message are attached.\n")
    report = (f"Reporting-MTA: dns; {host}\n"
              f"Arrival-Date: {formatdate(arrival)}\n\n"
              f"Final-Recipient: rfc822; {alias}\n"
              f"Action: {action}\n"
              f"Status: {status}\n"
              f"Diagnostic-Code: {diagnostic}\n"
              f"Last-Attempt-Date: {now}\n")
    original = header.replace(b"\r\n", b"\n")
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
