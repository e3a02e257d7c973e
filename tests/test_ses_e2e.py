"""SMTP -> relay -> Amazon SES (moto in server mode) end to end, on SQLite and
PostgreSQL: a list post leaves through SES with each delivery keeping SES's MessageId,
and an SES bounce mail for an alias forward (issue 11 part 8) comes back to the SRS
address and reaches the original sender naming the alias, never its target."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import smtplib
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from mailflow.model import ListKind
from mailflow.store.tables import deliveries
from mailflow.testing.aws import MotoServer, SnsSigner
from mailflow.testing.factories import make_message
from mailflow.testing.fault_proxy import FaultProxy
from mailflow.testing.relay import RelayProcess

SEND_PATH = "/v2/email/outbound-emails"


@pytest.fixture
def ses_relay(moto: MotoServer, make_relay: Callable[..., RelayProcess]
              ) -> Iterator[tuple[RelayProcess, FaultProxy]]:
    """A relay whose egress is SES (moto), through a proxy that only watches."""
    moto.reset()
    moto.verify("outside.test", "origin.example", "relay.test", "example.test")
    with FaultProxy(moto.url, faults=0, path_prefix=SEND_PATH) as watcher:
        relay = make_relay(egress="ses", ses_max_send_rate="100", poll_interval="0.1")
        relay.env.update(moto.aws_env(watcher.url))
        yield relay.start(), watcher
        relay.stop()


def wait_for_sends(moto: MotoServer, count: int, timeout: float = 30.0
                   ) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        sends = moto.raw_sends()
        if len(sends) >= count:
            return sends
        assert time.monotonic() < deadline, f"{len(sends)} of {count} sends"
        time.sleep(0.05)


def test_a_list_post_goes_out_through_ses_and_each_delivery_keeps_the_ses_id(
        ses_relay: tuple[RelayProcess, FaultProxy], moto: MotoServer) -> None:
    relay, watcher = ses_relay
    address, members = relay.fresh_list(members=3)
    message = make_message(address).replace(f"To: {address}\r\n".encode(), b"")
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.sendmail("poster@outside.test", [address], message)
    (send,) = wait_for_sends(moto, 1)
    assert sorted(send["destinations"]) == sorted(members)
    assert "List-Id:" in send["raw_data"] and send["raw_data"].endswith("Hello list.\r\n")
    (request,) = [json.loads(body) for body in watcher.bodies]
    assert request["FeedbackForwardingEmailAddress"] == address.replace("@", "-bounces@")
    assert relay.wait_settled()["delivered"] == 3
    with relay.repository() as repo, repo.engines.reader.connect() as conn:
        ids = {r.recipient: r.provider_message_id for r in conn.execute(select(deliveries))}
    assert ids == dict.fromkeys(members, send["id"])


def test_a_throttled_send_is_retried_by_the_relay_and_sent_once(
        moto: MotoServer, make_relay: Callable[..., RelayProcess]) -> None:
    moto.reset()
    moto.verify("outside.test")
    with FaultProxy(moto.url, faults=2, path_prefix=SEND_PATH) as proxy:
        relay = make_relay(egress="ses", ses_max_send_rate="100", poll_interval="0.1")
        relay.env.update(moto.aws_env(proxy.url))
        with relay:
            address, (member,) = relay.fresh_list(members=1)
            with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
                client.sendmail("poster@outside.test", [address], make_message(address))
            assert relay.wait_settled()["delivered"] == 1
            shown = relay.cli("queue", "show", "--json")
    assert (proxy.faulted, proxy.hits) == (2, 3)
    (send,) = moto.raw_sends()
    assert set(send["destinations"]) == {member, address}  # moto adds the To field
    (delivery,) = json.loads(shown.stdout)["deliveries"]
    assert (delivery["status"], delivery["attempts"]) == ("delivered", 3)
    assert delivery["last_reply"] == f"250 2.0.0 accepted by Amazon SES as {send['id']}"


def test_an_ses_bounce_mail_for_a_forward_reaches_the_sender_naming_the_alias(
        ses_relay: tuple[RelayProcess, FaultProxy], moto: MotoServer) -> None:
    relay, watcher = ses_relay
    alias, (target,) = relay.fresh_list(members=1, kind=ListKind.ALIAS)
    original = "alice@origin.example"
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.sendmail(original, [alias], make_message(alias, sender=original)
                        .replace(f"To: {alias}\r\n".encode(), b""))
    (forward,) = wait_for_sends(moto, 1)
    # SES's bounce comes after the relay has recorded SES's id for the copy: settled.
    relay.wait_settled()
    srs_address = json.loads(watcher.bodies[0])["FeedbackForwardingEmailAddress"]
    assert srs_address.startswith("SRS0=")
    assert base64.b64decode(json.loads(watcher.bodies[0])["Content"]["Raw"]["Data"]) \
        .decode() == forward["raw_data"]

    # SES mails the bounce to the feedback address; its returned header has SES's
    # Message-ID for the copy and (here) none of our own fields.
    bounce = (b"From: MAILER-DAEMON@amazonses.com\r\nTo: " + srs_address.encode() +
              b"\r\nSubject: Delivery Status Notification (Failure)\r\n"
              b"MIME-Version: 1.0\r\nContent-Type: multipart/report; "
              b'report-type=delivery-status; boundary="b"\r\n\r\n--b\r\n'
              b"Content-Type: text/plain\r\n\r\nAn error occurred while trying to deliver "
              b"the mail to the following recipients:\r\n" + target.encode() + b"\r\n--b\r\n"
              b"Content-Type: message/delivery-status\r\n\r\n"
              b"Reporting-MTA: dns; a27-30.smtp-out.us-west-2.amazonses.com\r\n\r\n"
              b"Final-Recipient: rfc822; " + target.encode() + b"\r\nAction: failed\r\n"
              b"Status: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 user unknown\r\n--b\r\n"
              b"Content-Type: text/rfc822-headers\r\n\r\n"
              b"From: " + original.encode() + b"\r\nTo: " + target.encode() + b"\r\n"
              b"Message-ID: <" + forward["id"].encode() + b"@email.amazonses.com>\r\n"
              b"Subject: hello\r\n\r\n--b--\r\n")
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.sendmail("", [srs_address], bounce)
    report_send = wait_for_sends(moto, 2)[1]
    # moto adds the report's To field to the destinations; what was asked is the envelope.
    assert json.loads(watcher.bodies[1])["Destination"] == {"ToAddresses": [original]}
    assert "FeedbackForwardingEmailAddress" not in json.loads(watcher.bodies[1])
    assert target not in report_send["raw_data"]
    report = email.message_from_string(report_send["raw_data"], policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    _, per_recipient = list(report.iter_parts())[1].get_payload()
    assert per_recipient["Final-Recipient"] == f"rfc822; {alias}"
    assert per_recipient["Status"] == "5.1.1"


def test_ses_bounce_and_complaint_notifications_reach_the_members_through_the_webhook(
        moto: MotoServer, make_relay: Callable[..., RelayProcess]) -> None:
    """SES's notifications about copies it sent, signed as SNS signs them: a permanent
    bounce fails that member's delivery and counts against the member; a complaint
    unsubscribes and suppresses the member who complained."""
    moto.reset()
    moto.verify("outside.test", "example.test")
    topic = moto.client("sns").create_topic(Name="ses-feedback")["TopicArn"]
    with SnsSigner() as signer:
        relay = make_relay(egress="ses", ses_max_send_rate="100", poll_interval="0.1",
                           sns_topics=topic, sns_cert_url_pattern=signer.cert_url_pattern)
        relay.env.update(moto.env)
        with relay:
            address, members = relay.fresh_list(members=3)
            with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
                client.sendmail("poster@outside.test", [address], make_message(address)
                                .replace(f"To: {address}\r\n".encode(), b""))
            (send,) = wait_for_sends(moto, 1)
            assert relay.wait_settled()["delivered"] == 3
            bounced, complained, _ = members
            mail = {"timestamp": "2026-12-01T10:00:00.000Z", "source": address,
                    "messageId": send["id"], "destination": members}
            bounce = {"notificationType": "Bounce", "mail": mail, "bounce": {
                "bounceType": "Permanent", "bounceSubType": "General",
                "timestamp": "2026-12-01T10:00:01.000Z", "feedbackId": "f1",
                "bouncedRecipients": [{"emailAddress": bounced, "status": "5.1.1",
                                       "action": "failed",
                                       "diagnosticCode": "smtp; 550 5.1.1 no such user"}]}}
            complaint = {"notificationType": "Complaint", "mail": mail, "complaint": {
                "complainedRecipients": [{"emailAddress": complained}],
                "timestamp": "2026-12-01T10:00:02.000Z", "feedbackId": "f2",
                "complaintFeedbackType": "abuse"}}
            url = f"http://127.0.0.1:{relay.http_port}/v1/ingress/sns"
            for note in (bounce, complaint):
                answer = httpx.post(url, json=signer.notification(topic, note), timeout=30)
                assert answer.status_code == 200, answer.text
            shown = json.loads(relay.cli("queue", "show", "--json").stdout)
            status = {d["recipient"]: d["status"] for d in shown["deliveries"]}
            assert status == {bounced: "failed", complained: "delivered",
                              members[2]: "delivered"}
            roster = {m["address"]: m for m in json.loads(
                relay.cli("member", "list", address, "--json").stdout)}
            assert roster[bounced]["bounce_score"] == 1.0
            assert roster[complained]["status"] == "unsubscribed"
            assert roster[members[2]]["bounce_score"] == 0.0
            suppressed = json.loads(relay.cli("suppress", "ls", "--json").stdout)
            assert [(e["address"], e["list"]) for e in suppressed] == [(complained, address)]
