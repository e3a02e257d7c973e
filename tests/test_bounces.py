"""Bounce processing without a process or a database: reading real-world bounce
formats, VERP tokens and envelope senders, the bounce score on a fake clock, and the
bounces step of the processing chain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailflow.bounce_score import DAY, BouncePolicy, BounceState, Due, after, after_bounce, due
from mailflow.model import (
    GENERATED,
    BounceKind,
    BounceReport,
    BounceSource,
    InboundMessage,
    ListKind,
    MailingList,
    MemberStatus,
    Resolution,
)
from mailflow.pipeline.chain import copy_recipient, rendering_variant
from mailflow.pipeline.context import ProcessContext
from mailflow.pipeline.process.bounce_reading import read_bounce
from mailflow.pipeline.process.bounces import bounces
from mailflow.pipeline.send.envelope import envelope_sender
from mailflow.srs import Srs
from mailflow.testing.clock import FakeClock
from mailflow.verp import Verp, token_of

DATA = Path(__file__).parent / "data" / "bounces"
EXPECTED = json.loads((DATA / "expected.json").read_text())
TEAM = MailingList(1, "team@lists.example.test", ListKind.LIST, "Team", 0, 0.0,
                   personalize=True)
SHARED = MailingList(2, "shared@lists.example.test", ListKind.LIST, "", 0, 0.0)
VERP = Verp("secret")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_world_bounce_formats_name_the_address_and_its_permanence(name: str) -> None:
    findings = read_bounce((DATA / name).read_bytes())
    assert sorted(findings.permanent) == EXPECTED[name]["permanent"]
    assert sorted(findings.temporary) == EXPECTED[name]["temporary"]
    assert not findings.complaint


def test_a_feedback_report_is_a_complaint_naming_the_original_recipient() -> None:
    findings = read_bounce((DATA / "arf_complaint.eml").read_bytes())
    assert findings.complaint
    assert findings.complainants == {"kim@hotmail.example"}
    assert not findings.permanent and not findings.temporary


def test_a_message_that_is_no_bounce_finds_nothing() -> None:
    assert read_bounce(b"From: a@b.test\r\nSubject: hi\r\n\r\nhello\r\n").empty


# -- VERP --------------------------------------------------------------------------------

def test_verp_sender_names_the_member_through_a_case_insensitive_token() -> None:
    sender = VERP.sender(TEAM.address, "alice@example.net")
    local, _, domain = sender.partition("@")
    assert domain == "lists.example.test"
    assert local.startswith("team-bounces+") and len(local) <= 64
    token = token_of(sender)
    roster = ["bob@example.net", "alice@example.net"]
    assert VERP.member(TEAM.address, token, roster) == "alice@example.net"
    assert VERP.member(TEAM.address, token.upper(), roster) == "alice@example.net"
    assert VERP.member(SHARED.address, token, roster) is None  # another list's token
    assert Verp("other").member(TEAM.address, token, roster) is None  # another secret
    assert VERP.member(TEAM.address, token, ["bob@example.net"]) is None
    assert token_of("team+tag@lists.example.test") == ""


def test_a_personalized_list_sends_each_member_its_own_envelope_sender() -> None:
    message = InboundMessage("m1", "bob@example.org", (TEAM.address,), "h", 1, 0.0, "", "",
                             "ESMTP")
    one = envelope_sender(message, TEAM, None, 0.0, VERP, "alice@example.net")
    other = envelope_sender(message, TEAM, None, 0.0, VERP, "carol@example.net")
    assert one != other and token_of(one) and token_of(other)
    # Shared copies and lists without personalization keep the plain bounce address.
    assert envelope_sender(message, TEAM, None, 0.0, VERP, "") == TEAM.bounces_address
    assert envelope_sender(message, SHARED, None, 0.0, VERP, "x@y.test") == \
        SHARED.bounces_address
    # The relay's own mail stays null; alias forwards keep SRS.
    generated = InboundMessage("m2", "", ("a@b.test",), "h", 1, 0.0, "", "", GENERATED)
    assert envelope_sender(generated, TEAM, None, 0.0, VERP, "alice@example.net") == ""
    alias = MailingList(3, "info@lists.example.test", ListKind.ALIAS, "", 0, 0.0,
                        personalize=True)
    assert envelope_sender(message, alias, Srs("s"), 0.0, VERP, "x@y.test").startswith("SRS0=")


def test_a_personalized_copy_is_its_members_own_rendering_variant() -> None:
    assert copy_recipient(TEAM, ["alice@example.net"]) == "alice@example.net"
    assert copy_recipient(SHARED, ["alice@example.net"]) == ""
    assert rendering_variant(TEAM, "alice@example.net") != rendering_variant(
        TEAM, "carol@example.net")
    assert rendering_variant(SHARED, "") == rendering_variant(SHARED, "alice@example.net")


# -- the score on a fake clock -----------------------------------------------------------

def test_the_bounce_score_rises_once_a_day_and_resets_after_a_quiet_week() -> None:
    clock = FakeClock(1_800_000_000.0 - 1_800_000_000.0 % DAY + 3600)
    state, counted = after_bounce(BounceState(), BounceKind.PERMANENT, clock.now(), 5)
    assert counted and state.score == 1
    clock.advance(3600)  # the same day: not counted again
    same, counted = after_bounce(state, BounceKind.PERMANENT, clock.now(), 5)
    assert not counted and same == state
    clock.advance(DAY)
    state, _ = after_bounce(state, BounceKind.TEMPORARY, clock.now(), 5)
    assert state.score == 1.5
    clock.advance(7 * DAY)  # a week without bounces
    assert due(state, clock.now()) is Due.RESET
    assert after(state, Due.RESET, clock.now()).score == 0
    state, _ = after_bounce(state, BounceKind.PERMANENT, clock.now(), 5)
    assert state.score == 1  # started again


def test_at_the_threshold_the_member_is_disabled_warned_three_times_then_removed() -> None:
    clock = FakeClock()
    policy = BouncePolicy()
    state = BounceState()
    for _ in range(5):
        assert state.status is MemberStatus.ACTIVE
        state, counted = after_bounce(state, BounceKind.PERMANENT, clock.now(), 5)
        assert counted
        clock.advance(DAY)
    assert state.status is MemberStatus.DISABLED and state.score == 5
    # A disabled member's bounces no longer count.
    assert after_bounce(state, BounceKind.PERMANENT, clock.now(), 5) == (state, False)
    for number in (1, 2, 3):
        assert due(state, clock.now(), policy) is Due.WARN
        state = after(state, Due.WARN, clock.now())
        assert state.warnings_sent == number
        clock.advance(6 * DAY)
        assert due(state, clock.now(), policy) is Due.NOTHING  # one every 7 days
        clock.advance(DAY)
    assert due(state, clock.now(), policy) is Due.REMOVE


def test_a_member_disabled_by_hand_or_unsubscribed_is_left_alone() -> None:
    assert due(BounceState(MemberStatus.DISABLED), 1e9) is Due.NOTHING
    assert due(BounceState(MemberStatus.UNSUBSCRIBED, 3, 0.0), 1e9) is Due.NOTHING
    assert after_bounce(BounceState(MemberStatus.UNSUBSCRIBED), BounceKind.PERMANENT,
                        1e9, 5)[1] is False


# -- the bounces step --------------------------------------------------------------------

class Directory:
    def __init__(self, roster: list[str]) -> None:
        self.members = roster

    def resolve(self, address: str) -> Resolution:
        base, _, tag = address.partition("@")[0].partition("+")
        if base == "team-bounces":
            return Resolution("bounces", TEAM, tag)
        return Resolution("list", TEAM)

    def active_member_addresses(self, list_id: int) -> list[str]:
        return self.members

    def roster(self, list_id: int) -> list[str]:
        return self.members

    def verp_member(self, mailing_list: MailingList, token: str) -> str | None:
        return VERP.member(mailing_list.address, token, self.members)


def run(rcpt: str, fixture: str, roster: list[str]) -> ProcessContext:
    raw = (DATA / fixture).read_bytes()
    message = InboundMessage("m1", "", (rcpt,), "h", len(raw), 0.0, "", "", "ESMTP")
    ctx = ProcessContext(message, Directory(roster), 0.0, lambda: raw)  # type: ignore[arg-type]
    bounces(ctx)
    return ctx


def test_a_verp_token_names_the_member_whatever_the_bounce_says() -> None:
    roster = ["zed@example.net", "alice@example.net"]
    address = VERP.sender(TEAM.address, "zed@example.net")
    assert run(address, "dsn_postfix_failed.eml", roster).bounces == [
        BounceReport(TEAM.id, "zed@example.net", BounceKind.PERMANENT, BounceSource.VERP)]
    assert run(address.upper(), "dsn_delayed.eml", roster).bounces == [
        BounceReport(TEAM.id, "zed@example.net", BounceKind.TEMPORARY, BounceSource.VERP)]


def test_without_a_token_the_parsed_addresses_count_if_they_are_members() -> None:
    ctx = run(TEAM.bounces_address, "dsn_postfix_failed.eml", ["alice@example.net"])
    assert ctx.bounces == [BounceReport(TEAM.id, "alice@example.net", BounceKind.PERMANENT,
                                        BounceSource.DSN)]
    assert ctx.deliveries == []
    stranger = run(TEAM.bounces_address, "exim.eml", ["alice@example.net"])
    assert stranger.bounces == []
    assert stranger.events[0].detail == f"for {TEAM.address}: names no member, consumed"


def test_a_feedback_report_is_a_complaint_against_its_member() -> None:
    ctx = run(TEAM.bounces_address, "arf_complaint.eml", ["kim@hotmail.example"])
    assert ctx.bounces == [BounceReport(TEAM.id, "kim@hotmail.example", BounceKind.COMPLAINT,
                                        BounceSource.ARF)]
