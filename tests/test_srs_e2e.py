"""SRS and failure notices end to end: a running relay (with its child process) on
SQLite and PostgreSQL, a sink as the next hop for every domain, SMTP clients.

Each test uses aliases of its own, so the relay is shared.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
from collections.abc import Callable

import pytest

from mailflow import headers
from mailflow.model import ListKind
from mailflow.testing.factories import make_message
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink


@pytest.fixture(scope="module")
def relay(make_module_relay: Callable[..., RelayProcess]) -> RelayProcess:
    return make_module_relay().start()


def rcpt_reply(relay: RelayProcess, sender: str, recipient: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail(sender)
        return client.rcpt(recipient)


def test_forward_gets_an_srs_sender_and_a_bounce_to_it_reaches_the_original_sender(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    alias, (target,) = relay.fresh_list(members=1, kind=ListKind.ALIAS)
    original = f"alice.{alias.partition('@')[0]}@origin.example"
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.sendmail(original, [alias], make_message(alias, sender=original))
    (forwarded,) = module_sink.wait_for_copies([target])
    srs_sender = forwarded.mail_from
    assert srs_sender.startswith("SRS0=")
    assert srs_sender.endswith(f"=origin.example={original.partition('@')[0]}@example.test")

    # The destination bounces to the SRS address (in another case, as relays may),
    # naming the target and returning the header it got: the bounce is taken, and the
    # original sender gets a report naming the alias instead, with the null sender.
    returned, _ = headers.split_message(forwarded.content)
    bounce = (b"From: MAILER-DAEMON@members.test\r\nSubject: Undelivered\r\n"
              b"MIME-Version: 1.0\r\nContent-Type: multipart/report; "
              b'report-type=delivery-status; boundary="b"\r\n\r\n--b\r\n'
              b"Content-Type: message/delivery-status\r\n\r\n"
              b"Reporting-MTA: dns; members.test\r\n\r\n"
              b"Final-Recipient: rfc822; " + target.encode() + b"\r\nAction: failed\r\n"
              b"Status: 5.2.2\r\nDiagnostic-Code: smtp; 552 5.2.2 mailbox full\r\n--b\r\n"
              b"Content-Type: text/rfc822-headers\r\n\r\n" + returned + b"--b--\r\n")
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.sendmail("", [srs_sender.lower()], bounce)
    (relayed,) = module_sink.wait_for_copies([original])
    assert relayed.mail_from == "<>"  # aiosmtpd keeps the null sender so
    assert relayed.rcpt_tos == (original,)
    assert target.encode() not in relayed.content
    report = email.message_from_bytes(relayed.content, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    _, per_recipient = list(report.iter_parts())[1].get_payload()
    assert per_recipient["Final-Recipient"] == f"rfc822; {alias}"
    assert per_recipient["Status"] == "5.2.2"

    # A forged hash and a malformed address are refused at RCPT; so is an SRS address
    # of a domain the relay does not serve (not ours to judge).
    tag, hash_, rest = srs_sender.split("=", 2)
    forged = f"{tag}={'A' if hash_[0] != 'A' else 'B'}{hash_[1:]}={rest}"
    code, text = rcpt_reply(relay, "", forged)
    assert (code, text.split()[0]) == (550, b"5.1.7"), text
    assert b"hash" in text
    code, text = rcpt_reply(relay, "", "SRS0=xx@example.test")
    assert (code, text.split()[0]) == (550, b"5.1.7"), text
    assert rcpt_reply(relay, "", srs_sender.replace("example.test", "other.test"))[0] == 550


def test_a_forward_refused_for_good_gets_one_dsn_naming_the_alias_and_none_for_null(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    quiet, (quiet_target,) = relay.fresh_list(members=1, kind=ListKind.ALIAS)
    alias, (target,) = relay.fresh_list(members=1, kind=ListKind.ALIAS)
    original = f"bob.{alias.partition('@')[0]}@origin.example"
    for hidden in (quiet_target, target):
        module_sink.fail_rcpt(hidden, f"550 5.1.1 <{hidden}>: no such user here")
    before = sum(relay.counts()[0].values())
    # A bounce whose forward fails: nobody to tell.  Settled means its failure was
    # reported (the report comes before the outcome is written).
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.sendmail("", [quiet], make_message(quiet, sender="MAILER-DAEMON@x.test"))
    relay.wait_settled()
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.sendmail(original, [alias],
                        make_message(alias, sender=original, subject="lost"))

    (notice,) = module_sink.wait_for_copies([original])
    assert notice.mail_from == "<>"
    assert target.lower() not in notice.content.decode().lower()  # the target stays hidden
    parsed = email.message_from_bytes(notice.content, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    assert str(parsed["From"]).startswith("Mail Delivery System <MAILER-DAEMON@")
    assert parsed["Auto-Submitted"] == "auto-replied"
    text, status, original_headers = parsed.iter_parts()
    assert alias in text.get_content()
    assert status.get_content_type() == "message/delivery-status"
    per_message, per_recipient = status.get_payload()
    assert per_message["Reporting-MTA"].startswith("dns; ")
    assert per_recipient["Final-Recipient"] == f"rfc822; {alias}"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    assert original_headers.get_content_type() == "text/rfc822-headers"
    assert "Subject: lost" in original_headers.get_payload()
    relay.wait_settled()
    # The two posts and one notice: none for the null sender's forward.
    assert sum(relay.counts()[0].values()) == before + 3
    assert not module_sink.wait_for_copies(["MAILER-DAEMON@x.test"], timeout=0)
