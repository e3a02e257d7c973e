"""List commands without a relay: the parsing, the confirmation tokens, the step over a
directory double, and the robot addresses' resolution in the store (SQLite and
PostgreSQL)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from mailflow.confirm_tokens import BadToken, ConfirmTokens
from mailflow.model import (
    GENERATED,
    InboundMessage,
    ListKind,
    MailingList,
    MemberRole,
    MembershipAction,
    MembershipChange,
    MemberStatus,
    Resolution,
    SubscriptionPolicy,
)
from mailflow.pipeline.chain import process_chain, run_process
from mailflow.pipeline.context import ProcessContext
from mailflow.pipeline.process.commands import Command, ListCommands, parse_command
from mailflow.store import Repository
from mailflow.store.tables import members
from mailflow.testing.factories import make_list, make_message

TEAM = MailingList(1, "team@example.test", ListKind.LIST, "Team", 0, 0.0)
DAY = 86_400.0
NOW = 1_800_000_000.0


# -- parsing --------------------------------------------------------------------------

@pytest.mark.parametrize(("robot", "subject", "body", "expected"), [
    ("join", "anything", "unsubscribe", Command("join")),
    ("leave", "subscribe", "", Command("leave")),
    ("request", "subscribe", "", Command("join")),
    ("request", "Re: Fwd: JOIN", "", Command("join")),
    ("request", "Unsubscribe: please", "", Command("leave")),
    ("request", "", "\n\n  help\nsubscribe\n", Command("help")),
    ("request", "hello there", "leave\n", Command("leave")),
    ("request", "hello there", "> subscribe\nthanks\n", Command("unknown")),
    ("request", "what is this", "", Command("unknown")),
    ("request", "confirm", "", Command("unknown")),  # a confirm needs its token
])
def test_parse_command(robot: str, subject: str, body: str, expected: Command) -> None:
    assert parse_command(robot, subject, body) == expected


def test_a_token_in_the_subject_or_the_first_lines_is_a_confirmation() -> None:
    token = ConfirmTokens("s").token("team@example.test", "a@x.test", "join", NOW)
    assert parse_command("request", f"Re: confirm {token}", "") == Command("confirm", token)
    assert parse_command("request", "Re: hi", f"\nconfirm {token}\n") == \
        Command("confirm", token)
    quoted = f"> confirm {token}"  # only a quote: not the sender's own line
    assert parse_command("request", "hi", quoted) == Command("unknown")


# -- tokens ---------------------------------------------------------------------------

def test_a_token_confirms_its_list_address_and_action_until_it_expires() -> None:
    tokens = ConfirmTokens("secret", max_age=3 * DAY)
    token = tokens.token("team@example.test", "Ann@X.test", "leave", NOW)
    assert token.isascii() and " " not in token
    confirmed = tokens.check("TEAM@example.test", token, NOW + 3 * DAY - 1)
    assert (confirmed.action, confirmed.address) == ("leave", "Ann@X.test")
    with pytest.raises(BadToken, match="expired"):
        tokens.check("team@example.test", token, NOW + 3 * DAY + 1)
    with pytest.raises(BadToken, match="not valid for this list"):
        tokens.check("other@example.test", token, NOW)
    as_join = "j" + token[1:]  # the action is signed too
    with pytest.raises(BadToken, match="not valid"):
        tokens.check("team@example.test", as_join, NOW)
    with pytest.raises(BadToken, match="not valid"):
        ConfirmTokens("another").check("team@example.test", token, NOW)
    # A rotated secret keeps the tokens already mailed valid.
    assert ConfirmTokens("new", ("secret",)).check("team@example.test", token, NOW).action \
        == "leave"


@pytest.mark.parametrize("bad", ["", "x", "j1.YQ", "q1.YQ." + "a" * 26, "jzz.YQ." + "a" * 26,
                                 "j1.!!.aaaaaaaaaaaaaaaaaaaaaaaaaa", "j1.YQ." + "a" * 25])
def test_malformed_tokens_are_refused(bad: str) -> None:
    with pytest.raises(BadToken):
        ConfirmTokens("secret").check("team@example.test", bad, NOW)


# -- the step -------------------------------------------------------------------------

class Directory:
    """The processing chain's directory over dicts (a test double of the protocol)."""

    def __init__(self, target: MailingList, members: Sequence[str] = (),
                 owners: Sequence[str] = (), answered: int = 0) -> None:
        self.target = target
        self.members = set(members)
        self.owners = list(owners)
        self.answered = answered

    def resolve(self, address: str) -> Resolution:
        for suffix in ("join", "leave", "request"):
            if address == f"team-{suffix}@example.test":
                return Resolution("request", self.target, suffix)
        if address == "team-owner@example.test":
            return Resolution("owner", self.target)
        return Resolution("unknown_address")

    def active_member_addresses(self, list_id: int) -> list[str]:
        return sorted(self.members)

    def autoreply(self, mailing_list: MailingList) -> None:
        return None

    def last_reply(self, list_id: int, sender: str) -> float | None:
        return None

    def note_reply(self, list_id: int, sender: str, now: float) -> None:
        pass

    def roster(self, list_id: int) -> list[str]:
        return sorted(self.members)

    def verp_member(self, mailing_list: MailingList, token: str) -> str | None:
        return None

    def is_member(self, list_id: int, address: str) -> bool:
        return address in self.members

    def staff(self, list_id: int, roles: Sequence[MemberRole]) -> list[str]:
        return self.owners

    def command_replies(self, address: str, now: float) -> int:
        return self.answered

    def note_command_reply(self, address: str) -> None:
        self.answered += 1


TOKENS = ConfirmTokens("secret", max_age=3 * DAY)
STEP = ListCommands(TOKENS, "https://lists.example.test", max_replies=3)


def run(directory: Directory, to: str, *, sender: str = "ann@x.test", subject: str = "hi",
        body: bytes = b"Hello.\r\n", extra: Sequence[str] = (), now: float = NOW,
        protocol: str = "ESMTP") -> ProcessContext:
    raw = make_message(to, sender=sender, subject=subject, body=body, extra_headers=extra)
    message = InboundMessage("m1", sender, (to,), "h", len(raw), now, "", "", protocol)
    return run_process(process_chain(STEP), message, directory, now, lambda: raw)


def details(ctx: ProcessContext) -> list[str]:
    return [e.detail for e in ctx.events if e.kind == "command"]


def test_join_on_a_confirm_list_mails_a_token_and_changes_nothing() -> None:
    ctx = run(Directory(TEAM), "team-join@example.test")
    assert ctx.memberships == []
    [mail] = ctx.generated
    assert mail.message.rcpt_tos == ("ann@x.test",) and mail.message.protocol == GENERATED
    assert b"Subject: confirm j" in mail.content
    assert ctx.answered == ["ann@x.test"]
    assert details(ctx) == ["team@example.test: join from <ann@x.test>: confirmation sent"]


def test_the_confirmation_joins_until_the_token_expires() -> None:
    token = TOKENS.token(TEAM.address, "ann@x.test", "join", NOW)
    ctx = run(Directory(TEAM), "team-request@example.test", subject=f"Re: confirm {token}",
              now=NOW + DAY)
    assert ctx.memberships == [MembershipChange(1, "ann@x.test", MembershipAction.JOIN)]
    assert b"Subject: Welcome to Team" in ctx.generated[0].content
    late = run(Directory(TEAM), "team-request@example.test", subject=f"confirm {token}",
               now=NOW + 4 * DAY)
    assert late.memberships == []
    assert details(late) == ["team@example.test: confirm from <ann@x.test>: refused, this "
                             "confirmation token has expired; ask again"]


def test_each_policy_answers_a_join() -> None:
    for policy, change, said in [
            (SubscriptionPolicy.OPEN, MembershipAction.JOIN, "joined, welcome sent"),
            (SubscriptionPolicy.APPROVE, MembershipAction.REQUEST,
             "held for approval, 1 owner(s) told"),
            (SubscriptionPolicy.CLOSED, None, "refused, the list is closed")]:
        target = replace(TEAM, subscription=policy)
        ctx = run(Directory(target, owners=["boss@x.test"]), "team-join@example.test")
        assert ctx.memberships == ([] if change is None else
                                   [MembershipChange(1, "ann@x.test", change)])
        assert details(ctx) == [f"team@example.test: join from <ann@x.test>: {said}"]


def test_a_leave_is_always_confirmed_first() -> None:
    target = replace(TEAM, subscription=SubscriptionPolicy.OPEN)
    ctx = run(Directory(target, members=["ann@x.test"]), "team-leave@example.test")
    assert ctx.memberships == [] and b"Subject: confirm l" in ctx.generated[0].content
    stranger = run(Directory(target), "team-leave@example.test")
    assert details(stranger) == ["team@example.test: leave from <ann@x.test>: not a member"]


@pytest.mark.parametrize(("sender", "extra", "why"), [
    ("", (), "the envelope sender is empty (a bounce or notification)"),
    ("mailer-daemon@x.test", (), "the sender <mailer-daemon@x.test> is a robot or role "
                                 "address"),
    ("other-request@x.test", (), "the sender <other-request@x.test> is a list's robot"),
    ("ann@x.test", ("Auto-Submitted: auto-generated",), "Auto-Submitted: auto-generated"),
    ("ann@x.test", ("Precedence: bulk",), "Precedence: bulk"),
    ("ann@x.test", ("List-Id: <a.x.test>",), "it came through a mailing list (List-Id)"),
])
def test_no_answer_to_robots_lists_and_automatic_mail(sender: str, extra: Sequence[str],
                                                      why: str) -> None:
    ctx = run(Directory(replace(TEAM, subscription=SubscriptionPolicy.OPEN)),
              "team-join@example.test", sender=sender, extra=extra)
    assert ctx.generated == [] and ctx.memberships == []
    assert details(ctx) == [f"team@example.test: ignored, no answer: {why}"]


def test_answers_per_address_are_bounded() -> None:
    ctx = run(Directory(TEAM, answered=3), "team-request@example.test", subject="help")
    assert ctx.generated == []
    assert details(ctx) == ["team@example.test: help from <ann@x.test> ignored: 3 answers to "
                            "that address today already"]
    own = run(Directory(TEAM), "team-request@example.test", protocol=GENERATED)
    assert own.generated == []


def test_owner_mail_goes_to_the_owners_sharing_the_stored_bytes() -> None:
    ctx = run(Directory(TEAM, owners=["boss@x.test", "deputy@x.test"]),
              "team-owner@example.test")
    [copy] = ctx.generated
    assert copy.content == b"" and copy.message.blob == "h"
    assert copy.message.mail_from == "team-bounces@example.test"
    assert [d.recipient for d in ctx.deliveries] == ["boss@x.test", "deputy@x.test"]
    nobody = run(Directory(TEAM), "team-owner@example.test")
    assert nobody.generated == [] and [e.detail for e in nobody.events] == [
        "mail to the owners for team@example.test: the list has no owner, dropped"]


# -- the store's resolution ---------------------------------------------------------------

def test_robot_addresses_resolve_for_lists_only(repo: Repository) -> None:
    make_list(repo, "team@example.test")
    make_list(repo, "info@example.test", kind=ListKind.ALIAS)
    make_list(repo, "real-owner@example.test")  # a list of that name comes first
    make_list(repo, "real@example.test")
    for suffix in ("join", "leave", "request"):
        found = repo.resolve(f"team-{suffix}@example.test")
        assert (found.kind, found.detail) == ("request", suffix)
        assert found.mailing_list is not None
        assert found.mailing_list.address == "team@example.test"
    assert repo.resolve("team-owner@example.test").kind == "owner"
    assert repo.resolve("info-join@example.test").kind == "unknown_address"
    assert repo.resolve("real-owner@example.test").kind == "list"
    assert repo.resolve("nobody-join@example.test").kind == "unknown_address"
    assert repo.resolve("team-bounces@example.test").kind == "bounces"


def test_the_store_writes_what_the_commands_decided(repo: Repository) -> None:
    team = make_list(repo, "team@example.test", ["ann@x.test", "gone@x.test"])
    with repo.engines.writer.begin() as conn:  # a complaint unsubscribed one of them
        conn.execute(members.update().where(members.c.address == "gone@x.test")
                     .values(status=MemberStatus.UNSUBSCRIBED.value))
    with repo.ingest_transaction() as tx:
        assert tx.directory.is_member(team.id, "ann@x.test")
        assert not tx.directory.is_member(team.id, "gone@x.test")
        assert tx.directory.command_replies("ann@x.test", NOW) == 0
        tx.apply_memberships([
            MembershipChange(team.id, "gone@x.test", MembershipAction.JOIN),
            MembershipChange(team.id, "ann@x.test", MembershipAction.LEAVE),
            MembershipChange(team.id, "new@x.test", MembershipAction.REQUEST),
            MembershipChange(team.id, "new@x.test", MembershipAction.REQUEST),
        ], ["ann@x.test", "ann@x.test", "bob@x.test"], NOW)
    assert {m.address: m.status for m in repo.members(team.address)} == {
        "gone@x.test": MemberStatus.ACTIVE}
    [request] = repo.subscription_requests(team.address)
    assert request.address == "new@x.test"
    with repo.ingest_transaction() as tx:  # a view remembers a count for its batch
        assert tx.directory.command_replies("ann@x.test", NOW + 60) == 2
    with repo.ingest_transaction() as tx:
        assert tx.directory.command_replies("ann@x.test", NOW + DAY + 1) == 0
        tx.apply_memberships([], ["bob@x.test"], NOW + DAY + 1)  # yesterday's rows go
        assert tx.directory.command_replies("bob@x.test", NOW + DAY + 2) == 1
        assert tx.take_request(request.id) == request
        assert tx.take_request(request.id) is None
    assert repo.subscription_requests() == []
