"""Which copy an Amazon SES bounce mail is about: SES's Message-IDs, read only from
mail that SES sent."""

from __future__ import annotations

from mailflow.pipeline.send.bounce import rewritten_bounce
from mailflow.pipeline.send.ses_bounce import ses_message_ids

SES_ID = "010001812345abcd-0f8ad2e1-1234-4a5b-9c8d-123456789abc-000000"
RETURNED = (b"\r\n--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            b"From: alice@origin.example\r\nTo: bob@target.example\r\n"
            b"Message-ID: <" + SES_ID.encode() + b"@us-west-2.amazonses.com>\r\n"
            b"References: <" + SES_ID.encode() + b"@email.amazonses.com>\r\n\r\n--b--\r\n")


def bounce(sender: bytes) -> bytes:
    return (b"From: " + sender + b"\r\nSubject: Delivery Status Notification\r\n"
            b"Content-Type: multipart/report; boundary=\"b\"\r\n\r\n--b\r\n"
            b"Content-Type: message/delivery-status\r\n\r\n"
            b"Final-Recipient: rfc822; bob@target.example\r\nAction: failed\r\n"
            b"Status: 5.1.1\r\n" + RETURNED)


def test_ses_message_ids_come_only_from_mail_ses_sent() -> None:
    assert ses_message_ids(bounce(b"MAILER-DAEMON@amazonses.com")) == [SES_ID]
    assert ses_message_ids(bounce(b"Mail Delivery <MAILER-DAEMON@amazonses.com>")) == [SES_ID]
    assert ses_message_ids(bounce(b"MAILER-DAEMON@mx.target.example")) == []
    assert ses_message_ids(bounce(b"x@amazonses.com.evil.example")) == []


def test_the_report_names_the_alias_the_store_found_not_the_target() -> None:
    report = rewritten_bounce(bounce(b"MAILER-DAEMON@amazonses.com"),
                              to="alice@origin.example", srs_address="SRS0=x@alias.example",
                              instance_id="inst1", hostname="relay.test", arrival=0, at=0,
                              sent_for="info@alias.example")
    assert b"Final-Recipient: rfc822; info@alias.example" in report
    assert b"target.example" not in report
