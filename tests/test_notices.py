"""Failure notices without a process: who gets one, what it says, how often."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Sequence

import pytest

from mailflow.model import RELAYED, Event, InboundMessage, NewDelivery, Resolution
from mailflow.pipeline.chain import run_process
from mailflow.pipeline.notice import Failure, failure_notice, status_of, wants_notice
from mailflow.pipeline.process.expand import expand
from mailflow.services.notices import FailureNotices, SentNotices
from mailflow.srs import Srs
from mailflow.testing.clock import FakeClock

NOW = 1_800_000_000.0
HEADER = (b"From: Alice <alice@origin.example>\r\nTo: info@alias.test\r\n"
          b"Subject: hello\r\nMessage-ID: <m1@origin.example>\r\n")


def message(sender: str = "alice@origin.example", id_: str = "m1") -> InboundMessage:
    return InboundMessage(id_, sender, ("info@alias.test",), "h", 10, NOW - 60, "", "",
                          "ESMTP")


def failure(sender: str = "alice@origin.example", header: bytes = HEADER,
            replies: tuple[str, ...] = ("550 5.1.1 <hidden@target.example>: unknown",),
            expired: bool = False, id_: str = "m1") -> Failure:
    return Failure(message(sender, id_), "info@alias.test", replies, header, expired, NOW)


def test_the_notice_parses_as_a_dsn_and_names_the_alias_not_the_target() -> None:
    raw = failure_notice(failure(), "relay.test")
    assert b"hidden" not in raw and b"target.example" not in raw
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    assert parsed["To"] == "alice@origin.example"
    assert parsed["In-Reply-To"] == "<m1@origin.example>"
    assert not parsed.defects
    text, status, original = parsed.iter_parts()
    assert "<info@alias.test> could not be delivered" in text.get_content()
    _, recipient = status.get_payload()
    assert recipient["Final-Recipient"] == "rfc822; info@alias.test"
    assert (recipient["Status"], recipient["Diagnostic-Code"]) == ("5.1.1", "smtp; 550 5.1.1")
    assert "Subject: hello" in original.get_payload()


def test_an_expired_forward_says_so() -> None:
    raw = failure_notice(failure(replies=("451 4.4.1 connection refused",), expired=True),
                         "relay.test")
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    text, status, _ = parsed.iter_parts()
    assert "gave up after trying" in text.get_content()
    assert status.get_payload()[1]["Status"] == "5.4.7"


@pytest.mark.parametrize(("reply", "expected"), [
    ("550 5.1.1 no such user", ("5.1.1", "smtp; 550 5.1.1")),
    ("554 no enhanced code", ("5.0.0", "smtp; 554 5.0.0")),
    ("550 4.1.1 mismatched", ("5.0.0", "smtp; 550 5.0.0")),
    ("internal error: boom", ("5.0.0", "smtp; 554 5.0.0")),
])
def test_status_of_keeps_the_codes_only(reply: str, expected: tuple[str, str]) -> None:
    assert status_of(reply) == expected


@pytest.mark.parametrize(("sender", "header", "wanted"), [
    ("alice@origin.example", HEADER, True),
    ("alice@origin.example", HEADER + b"Auto-Submitted: no\r\n", True),
    ("", HEADER, False),
    ("MAILER-DAEMON", HEADER, False),
    ("mailer-daemon@origin.example", HEADER, False),
    ("alice@origin.example", HEADER + b"Auto-Submitted: auto-replied\r\n", False),
    ("alice@origin.example", HEADER + b"auto-submitted: Auto-Generated (vacation)\r\n", False),
])
def test_who_is_told(sender: str, header: bytes, wanted: bool) -> None:
    assert wants_notice(message(sender), header) is wanted


def test_one_notice_per_message_and_alias_and_a_limit_per_sender_per_hour() -> None:
    sent = SentNotices(per_hour=2, limit=3)
    assert sent.admit("m1", "a@x", "s@y", NOW)
    assert not sent.admit("m1", "a@x", "s@y", NOW)  # the same message and alias
    assert sent.admit("m1", "b@x", "s@y", NOW)      # another alias of the same post
    assert not sent.admit("m2", "a@x", "s@y", NOW + 10)  # two this hour already
    assert sent.admit("m3", "a@x", "s@y", NOW + 3601)    # the hour has passed
    for n in range(10):  # other senders: both tables stay within their bound
        sent.admit(f"o{n}", "a@x", f"o{n}@y", NOW + 3601)
    assert len(sent._pairs) <= 3 and len(sent._senders) <= 3
    assert not SentNotices(per_hour=0).admit("m1", "a@x", "s@y", NOW)  # 0: none at all


class RecordingCommitter:
    def __init__(self) -> None:
        self.stored: list[tuple[InboundMessage, bytes, list[Event]]] = []

    async def commit(self, message: InboundMessage, data: bytes,
                     events: Sequence[Event] = ()) -> None:
        self.stored.append((message, data, list(events)))


class NoLists:
    def resolve(self, address: str) -> Resolution:
        return Resolution("unknown_address")

    def active_member_addresses(self, list_id: int) -> list[str]:
        raise AssertionError("no list here")


async def test_the_notice_is_stored_to_the_srs_address_and_relayed_to_the_sender() -> None:
    committer = RecordingCommitter()
    notices = FailureNotices(committer, FakeClock(NOW), Srs("k"), "relay.test", per_hour=5)
    notices.report(failure())
    notices.report(failure())  # the same failure again: no second notice
    notices.report(failure(sender=""))  # a bounce: none
    notices.report(failure(header=HEADER + b"Auto-Submitted: auto-replied\r\n", id_="m2"))
    runner = asyncio.create_task(notices.run())
    try:
        for _ in range(100):
            if committer.stored:
                break
            await asyncio.sleep(0.01)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    (stored, raw, events), = committer.stored
    assert stored.mail_from == ""
    (recipient,) = stored.rcpt_tos
    assert recipient.startswith("SRS0=") and recipient.endswith("@alias.test")
    assert [e.kind for e in events] == ["notice"]
    assert raw.startswith(b"From: Mail Delivery System <MAILER-DAEMON@relay.test>\r\n")
    ctx = run_process([expand], stored, NoLists())
    assert ctx.deliveries == [NewDelivery(stored.id, RELAYED, "alice@origin.example", 0)]
