"""Bounces returned to an SRS address, rewritten without a process: the alias named,
the target never."""

from __future__ import annotations

import email
import email.policy

from mailflow.model import RELAYED, InboundMessage, ListKind, MailingList
from mailflow.pipeline.notice import NOTICE_PROTOCOL
from mailflow.pipeline.send.bounce import returned_alias, rewritten_bounce
from mailflow.services.scheduler import Transaction, _returned_bounce

NOW = 1_800_000_000.0
COPY_HEADER = (b"Received: from mx.target.example by mx.target.example for <bob@target.example>\r\n"
               b"Received: from c.test by relay.test (MailFlow Relay) for <info@alias.test>\r\n"
               b"X-MailFlow-Loop: inst1; info@alias.test\r\n"
               b"From: Alice <alice@origin.example>\r\nSubject: hello\r\n"
               b"Message-ID: <m1@origin.example>\r\n")


def bounce(copy_header: bytes = COPY_HEADER, action: bytes = b"failed",
           status: bytes = b"5.1.1") -> bytes:
    return (b"From: MAILER-DAEMON@mx.target.example\r\nTo: SRS0=x@alias.test\r\n"
            b"Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n'
            b"\r\n--b\r\nContent-Type: text/plain\r\n\r\n<bob@target.example>: no such user\r\n"
            b"--b\r\nContent-Type: message/delivery-status\r\n\r\n"
            b"Reporting-MTA: dns; mx.target.example\r\n\r\n"
            b"Final-Recipient: rfc822; bob@target.example\r\nAction: " + action + b"\r\n"
            b"Status: " + status + b"\r\n"
            b"Diagnostic-Code: smtp; 550 5.1.1 <bob@target.example>: no such user\r\n"
            b"--b\r\nContent-Type: text/rfc822-headers\r\n\r\n" + copy_header +
            b"--b--\r\n")


def rewrite(raw: bytes) -> bytes:
    return rewritten_bounce(raw, to="alice@origin.example", srs_address="SRS0=x@alias.test",
                            instance_id="inst1", hostname="relay.test", arrival=NOW - 5,
                            at=NOW)


def test_the_alias_is_named_and_the_target_never() -> None:
    raw = rewrite(bounce())
    assert b"target.example" not in raw
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed["To"] == "alice@origin.example"
    text, status, original = parsed.iter_parts()
    assert "<info@alias.test> could not be delivered" in text.get_content()
    _, recipient = status.get_payload()
    assert recipient["Final-Recipient"] == "rfc822; info@alias.test"
    assert (recipient["Action"], recipient["Status"]) == ("failed", "5.1.1")
    assert recipient["Diagnostic-Code"] == "smtp; 550 5.1.1"
    # The sender's own fields only: the destination's and ours were before the marker.
    assert original.get_payload().startswith("From: Alice <alice@origin.example>")
    assert parsed["In-Reply-To"] == "<m1@origin.example>"


def test_a_delay_warning_stays_a_delay_warning() -> None:
    parsed = email.message_from_bytes(rewrite(bounce(action=b"delayed", status=b"4.4.1")),
                                      policy=email.policy.default)
    _, status, _ = parsed.iter_parts()
    assert status.get_payload()[1]["Action"] == "delayed"
    assert status.get_payload()[1]["Status"] == "4.4.1"
    assert status.get_payload()[1]["Diagnostic-Code"] == "smtp; 451 4.4.1"


def test_another_relays_marker_or_none_names_the_srs_address() -> None:
    foreign = COPY_HEADER.replace(b"inst1;", b"other;")
    assert returned_alias(bounce(foreign), "inst1") is None
    raw = rewrite(bounce(foreign))
    assert b"target.example" not in raw
    assert b"Final-Recipient: rfc822; SRS0=x@alias.test" in raw
    assert returned_alias(b"Subject: no report at all\r\n\r\nbody\r\n", "inst1") is None


def test_only_returned_bounces_are_rewritten() -> None:
    relayed = MailingList(RELAYED, "MAILER-DAEMON@relay.test", ListKind.ALIAS, "", 0, 0.0)
    alias = MailingList(2, "info@alias.test", ListKind.ALIAS, "", 0, 0.0)

    def tx(sender: str, protocol: str = "ESMTP", through: MailingList = relayed
           ) -> Transaction:
        message = InboundMessage("m1", sender, ("SRS0=x@alias.test",), "h", 10, NOW, "", "",
                                 protocol)
        return Transaction(message, through, [])

    assert _returned_bounce(tx(""))
    assert not _returned_bounce(tx("", NOTICE_PROTOCOL))  # our own notice
    assert not _returned_bounce(tx("bob@target.example"))  # the target's own reply
    assert not _returned_bounce(tx("", through=alias))     # a bounce forwarded by an alias
