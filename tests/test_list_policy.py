"""Posting policy and moderation without a relay process: the accept step's decisions,
the RCPT-time refusal (as the SMTP listener and the Postfix policy service get it), the
notices, and the store's side (roles, held posts, expiry on a fake clock) on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailflow.blobs import content_hash
from mailflow.cli import cli
from mailflow.config import Settings
from mailflow.errors import (
    InvalidInput,
    MailflowError,
    NotFound,
    PostingRefused,
    SenderBlocked,
    spec,
)
from mailflow.ingress.policy import decide as policy_decide
from mailflow.model import (
    GENERATED,
    Envelope,
    Event,
    InboundMessage,
    ListKind,
    MailingList,
    MemberRole,
    MessageStatus,
    NonMemberAction,
    PostingPolicy,
    Resolution,
    RuleAction,
    SenderRule,
)
from mailflow.pipeline.accept.posting import (
    PostingPolicyStep,
    author_identities,
    decide,
    poster,
)
from mailflow.pipeline.context import Action, MessageContext
from mailflow.pipeline.moderation import post_author
from mailflow.services.accept import AcceptPolicy, AcceptService
from mailflow.services.commit import IngestBatch, store_batch
from mailflow.services.directory import DirectoryService
from mailflow.services.installation import initialise
from mailflow.services.moderation import Moderation, ModerationSweep
from mailflow.services.sender_rules import SenderRuleBook
from mailflow.store import Repository, create_cli_engines
from mailflow.store.engine import Engines
from mailflow.store.runner import StoreRunner
from mailflow.testing.clock import FakeClock
from mailflow.testing.factories import make_list, make_message

TEAM = "team@example.test"
NOW = 1_800_000_000.0
DAY = 86_400.0
OWNER, MODERATOR, MEMBER = MemberRole.OWNER, MemberRole.MODERATOR, MemberRole.MEMBER


def a_list(posting: PostingPolicy, action: NonMemberAction = NonMemberAction.REJECT,
           list_id: int = 7) -> MailingList:
    return MailingList(list_id, TEAM, ListKind.LIST, "", 0, 0.0, posting=posting,
                       non_member_action=action)


# -- the policy table -------------------------------------------------------------------

@pytest.mark.parametrize(("posting", "role", "expected"), [
    (PostingPolicy.OPEN, None, None),
    (PostingPolicy.MEMBERS, MEMBER, None),
    (PostingPolicy.MEMBERS, MODERATOR, None),
    (PostingPolicy.MEMBERS, None, Action.REJECT),
    (PostingPolicy.MODERATED, MEMBER, Action.HOLD),
    (PostingPolicy.MODERATED, OWNER, None),
    (PostingPolicy.MODERATED, None, Action.REJECT),
    (PostingPolicy.ANNOUNCE, OWNER, None),
    (PostingPolicy.ANNOUNCE, MODERATOR, None),
    (PostingPolicy.ANNOUNCE, MEMBER, Action.REJECT),
    (PostingPolicy.ANNOUNCE, None, Action.REJECT),
])
def test_what_each_policy_admits(posting: PostingPolicy, role: MemberRole | None,
                                 expected: Action | None) -> None:
    decision = decide(a_list(posting), role, "x@outside.test")
    assert (None if decision is None else decision.action) == expected


def test_the_non_member_action_and_the_refusal_text() -> None:
    refused = decide(a_list(PostingPolicy.MEMBERS), None, "x@outside.test")
    assert refused is not None and isinstance(refused.error, PostingRefused)
    assert refused.error.smtp_reply() == (
        f"550 5.7.1 <x@outside.test> is not a member of {TEAM}, and only members may post to it: "
        "subscribe first (with the address the message comes from), or write to the "
        "list's owners")
    held = decide(a_list(PostingPolicy.MEMBERS, NonMemberAction.HOLD), None, "x@o.test")
    assert held is not None and (held.action, held.reason) == (
        Action.HOLD, f"posting policy of {TEAM}: <x@o.test> is not a member of {TEAM}")
    dropped = decide(a_list(PostingPolicy.ANNOUNCE, NonMemberAction.DISCARD), MEMBER, "m@o.t")
    assert dropped is not None and dropped.action is Action.DISCARD
    assert "only the owners and moderators" in dropped.reason


def test_the_least_privileged_identity_decides() -> None:
    roles = {(7, "own@x.test"): OWNER, (7, "mem@x.test"): MEMBER}
    assert poster(7, ["own@x.test"], roles) == (OWNER, "own@x.test")
    assert poster(7, ["own@x.test", "mem@x.test"], roles) == (MEMBER, "mem@x.test")
    assert poster(7, ["own@x.test", "stranger@x.test"], roles) == (None, "stranger@x.test")
    assert poster(7, [], roles) == (None, "")
    assert poster(8, ["own@x.test"], roles) == (None, "own@x.test")  # another list's roster
    header = b'From: "Ann" <Ann@X.test>, bob@x.test\r\nFrom: nobody\r\n'
    assert author_identities(header) == ["ann@x.test", "bob@x.test"]
    many = ("From: " + ", ".join(f"p{i}@x.test" for i in range(11)) + "\r\n").encode()
    assert author_identities(many) is None


class CountingRoster:
    def __init__(self, roles: Mapping[tuple[int, str], MemberRole]) -> None:
        self.known = roles
        self.asked: list[tuple[list[int], list[str]]] = []

    async def roles(self, list_ids: Sequence[int], senders: Sequence[str]
                    ) -> Mapping[tuple[int, str], MemberRole]:
        self.asked.append((list(list_ids), list(senders)))
        return {k: v for k, v in self.known.items() if k[0] in list_ids and k[1] in senders}


def lookup_of(*targets: MailingList):  # type: ignore[no-untyped-def]
    by_address = {t.address: t for t in targets}

    async def lookup(canonical: str) -> Resolution:
        found = by_address.get(canonical)
        return Resolution("list", found) if found else Resolution("unknown_address")

    return lookup


def test_the_step_reads_every_roster_in_one_query_and_checks_from_and_envelope() -> None:
    members = a_list(PostingPolicy.MEMBERS)
    announce = replace(a_list(PostingPolicy.ANNOUNCE, list_id=8), address="news@example.test")
    open_list = replace(a_list(PostingPolicy.OPEN, list_id=9), address="open@example.test")
    roster = CountingRoster({(7, "ann@x.test"): MEMBER, (8, "ann@x.test"): MEMBER,
                             (7, "env@x.test"): MEMBER, (8, "env@x.test"): OWNER})
    step = PostingPolicyStep(lookup_of(members, announce, open_list), roster)

    def run(mail_from: str, author: str) -> dict[str, Action]:
        raw = make_message(TEAM, sender=author)
        ctx = MessageContext.of(Envelope(mail_from, (TEAM, announce.address,
                                                     open_list.address)), raw)
        decided = asyncio.run(step(ctx, list(ctx.recipients.values())))
        return {k: d.action for k, d in decided.items()}

    # Both member and owner on the envelope, a member in From: the member decides.
    assert run("env@x.test", "ann@x.test") == {announce.address: Action.REJECT}
    assert roster.asked == [([7, 8], ["env@x.test", "ann@x.test"])]  # one query
    # A member's From: with a stranger's envelope is a non-member's post, named so.
    assert run("stranger@x.test", "ann@x.test") == {TEAM: Action.REJECT,
                                                    announce.address: Action.REJECT}
    ctx = MessageContext.of(Envelope("stranger@x.test", (TEAM,)),
                            make_message(TEAM, sender="ann@x.test"))
    refusal = asyncio.run(step(ctx, list(ctx.recipients.values())))[TEAM].error
    assert str(refusal).startswith(f"<stranger@x.test> is not a member of {TEAM}")
    # The null sender identifies nobody: the From: alone decides.
    assert run("", "ann@x.test") == {announce.address: Action.REJECT}
    roster.asked.clear()
    ctx = MessageContext.of(Envelope("x@y.test", (open_list.address,)), make_message("o"))
    assert asyncio.run(step(ctx, list(ctx.recipients.values()))) == {}
    assert roster.asked == []  # open lists cost no query


# -- at RCPT: the SMTP listener and the Postfix policy service ----------------------------

class NoCommit:
    async def commit(self, message: InboundMessage, data: bytes,
                     events: Sequence[Event] = ()) -> None:
        raise AssertionError("nothing is stored here")


def service_for(*targets: MailingList, roster: CountingRoster,
                rules: Sequence[SenderRule] = ()) -> AcceptService:
    clock = FakeClock(NOW)

    async def fetch(sender: str) -> Sequence[SenderRule]:
        return list(rules)

    async def count() -> int:
        return len(rules)

    return AcceptService(lookup_of(*targets), NoCommit(), clock,
                         AcceptPolicy("inst", 1 << 20, 30, 0.0),
                         rules=SenderRuleBook(fetch, count, clock, 60.0), roster=roster)


def test_rcpt_refuses_where_the_envelope_sender_alone_decides() -> None:
    members = a_list(PostingPolicy.MEMBERS)
    held = replace(a_list(PostingPolicy.MEMBERS, NonMemberAction.HOLD, 8),
                   address="held@example.test")
    roster = CountingRoster({(7, "ann@x.test"): MEMBER})
    service = service_for(members, held, roster=roster)
    with pytest.raises(PostingRefused, match="is not a member of"):
        asyncio.run(service.check_recipient(TEAM, "stranger@x.test"))
    # A member's envelope: the From: field decides after DATA.
    asyncio.run(service.check_recipient(TEAM, "Ann@X.test"))
    # Held, not refused, and the null sender: nothing to say at RCPT.
    asyncio.run(service.check_recipient(held.address, "stranger@x.test"))
    asyncio.run(service.check_recipient(TEAM, ""))
    assert not service.answers_for_every_sender(Resolution("list", members))
    assert service.answers_for_every_sender(Resolution("list", a_list(PostingPolicy.OPEN)))
    request = {"request": "smtpd_access_policy", "recipient": TEAM}
    assert asyncio.run(policy_decide(service, {**request, "sender": "stranger@x.test"})) \
        .startswith("REJECT 5.7.1 <stranger@x.test> is not a member of")
    assert asyncio.run(policy_decide(service, {**request, "sender": "ann@x.test"})) == "DUNNO"


def test_a_blocked_sender_is_refused_as_blocked_whatever_its_role() -> None:
    roster = CountingRoster({(7, "ann@x.test"): OWNER})
    service = service_for(a_list(PostingPolicy.MEMBERS), roster=roster,
                          rules=[SenderRule(RuleAction.BLOCK, "ann@x.test")])
    with pytest.raises(SenderBlocked):
        asyncio.run(service.check_recipient(TEAM, "ann@x.test"))


# -- notices ----------------------------------------------------------------------------

def test_the_author_of_a_post() -> None:
    assert post_author("env@x.test", b"From: Ann <Ann@X.test>\r\n") == "ann@x.test"
    assert post_author("env@x.test", b"Subject: none\r\n") == "env@x.test"
    assert post_author("", b"From: MAILER-DAEMON@x.test\r\n") == ""
    assert post_author("a@x.test", b"From: a@x.test\r\nAuto-Submitted: auto-replied\r\n") == ""


# -- the store: roles, held posts, the sweep on a fake clock -------------------------------

def held_post(repo: Repository, message_id: str, raw: bytes, reason: str,
              sender: str = "poster@outside.test", to: str = TEAM) -> None:
    message = InboundMessage(message_id, sender, (to,), content_hash(raw), len(raw), NOW,
                             "127.0.0.1", "client.test", "ESMTP", status=MessageStatus.HELD)
    store_batch(repo, IngestBatch([message], bodies={message.blob: raw},
                                  events=[Event("held", f"{to}: {reason}", message_id)]),
                NOW, lambda: None)


def read_stored(repo: Repository):  # type: ignore[no-untyped-def]
    def read(message: InboundMessage) -> bytes:
        stored = repo.stored_body(message.blob)
        assert stored is not None
        return stored
    return read


def test_roles_and_policy_settings_are_stored(repo: Repository) -> None:
    make_list(repo, TEAM)
    directory = DirectoryService(repo, FakeClock(NOW))
    directory.add_members(TEAM, ["own@x.test"], role="owner")
    directory.add_members(TEAM, ["mem@x.test", "Own@x.test"])  # no role: the owner stays
    assert {m.address: m.role for m in directory.members(TEAM)} == {
        "own@x.test": OWNER, "mem@x.test": MEMBER}
    assert directory.set_role(TEAM, ["mem@x.test", "nobody@x.test"], "moderator") == 1
    team = directory.get_list(TEAM)
    assert repo.roster_roles([team.id], ["own@x.test", "mem@x.test", "x@y.test"]) == {
        (team.id, "own@x.test"): OWNER, (team.id, "mem@x.test"): MODERATOR}
    updated = directory.update_list(TEAM, posting="announce", non_member_action="hold",
                                    hold_days=3)
    assert (updated.posting, updated.non_member_action, updated.hold_days) == (
        PostingPolicy.ANNOUNCE, NonMemberAction.HOLD, 3)
    assert directory.get_list(TEAM) == updated
    for bad in ({"posting": "closed"}, {"non_member_action": "bounce"}, {"hold_days": 0}):
        with pytest.raises(InvalidInput):
            directory.update_list(TEAM, **bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="invalid role"):
        directory.add_members(TEAM, ["a@x.test"], role="admin")


def test_the_sweep_tells_moderators_once_then_expires_posts(engines: Engines) -> None:
    runner = StoreRunner(engines, pool_size=1)
    repo = runner.repo
    make_list(repo, TEAM, ["ann@members.test"])
    directory = DirectoryService(repo, FakeClock(NOW))
    directory.add_members(TEAM, ["own@x.test"], role="owner")
    directory.add_members(TEAM, ["mod@x.test"], role="moderator")
    directory.update_list(TEAM, hold_days=2)
    raw = make_message(TEAM, subject="please approve")
    held_post(repo, "m1", raw, "posting policy: not a member")
    clock = FakeClock(NOW + 60)
    sweep = ModerationSweep(runner, clock, read_stored(repo), interval=1.0)

    assert asyncio.run(sweep.sweep()) == (1, 0, 0)
    assert asyncio.run(sweep.sweep()) == (0, 0, 0)  # told once
    told = sorted(d.recipient for d in repo.list_deliveries(10))
    assert told == ["mod@x.test", "own@x.test"]  # not the plain member
    [notice_id] = {d.message_id for d in repo.list_deliveries(10)}
    [stored] = [m for m in repo.delivery_context([notice_id], [])[0].values()]
    assert (stored.mail_from, stored.protocol) == ("", GENERATED)
    notice = email.message_from_bytes(repo.stored_body(stored.blob) or b"",
                                      policy=email.policy.default)
    assert isinstance(notice, EmailMessage)
    assert notice["Subject"] == f"{TEAM}: post held for moderation: please approve"
    text, attached = [part for part in notice.iter_parts()]
    assert "mailflow held approve m1" in text.get_content()
    assert "posting policy: not a member" in text.get_content()
    assert attached.get_content_type() == "message/rfc822"
    assert attached.get_content()["Subject"] == "please approve"

    clock.advance(2 * DAY - 120)  # not yet two days since it was received
    assert asyncio.run(sweep.sweep()) == (0, 0, 0)
    clock.advance(61)
    assert asyncio.run(sweep.sweep()) == (0, 1, 0)
    assert repo.message_counts()["held"] == 0
    assert [kind for _, kind, _ in repo.message_events("m1")][-1] == "expired"
    with pytest.raises(NotFound):
        directory.release_held("m1")
    runner.close()


def test_reject_queues_a_notice_to_the_author_and_approve_adds_a_member(
        repo: Repository) -> None:
    make_list(repo, TEAM, ["ann@members.test"])
    moderation = Moderation(repo, FakeClock(NOW), read_stored(repo))
    held_post(repo, "m1", make_message(TEAM, sender="Pat <pat@outside.test>"), "held",
              sender="bounce+pat@outside.test")
    held_post(repo, "m2", make_message(TEAM, sender="sam@outside.test"), "held")
    assert moderation.reject("m1", "Off topic here.") == "pat@outside.test"
    [delivery] = repo.list_deliveries(10)
    assert delivery.recipient == "pat@outside.test"
    [notice] = repo.delivery_context([delivery.message_id], [])[0].values()
    body = repo.stored_body(notice.blob) or b""
    assert notice.mail_from == "" and b"Off topic here." in body
    assert [kind for _, kind, _ in repo.message_events("m1")][-1] == "rejected"
    with pytest.raises(InvalidInput):
        moderation.reject("m2", "bad\x00reason")
    assert moderation.approve("m2", add_member=True) == [TEAM]
    assert "sam@outside.test" in [m.address for m in repo.members(TEAM)]
    assert repo.message_counts()["received"] == 1  # approved: waits for expansion
    with pytest.raises(NotFound):
        moderation.discard("m2")


# -- the commands (in-process; the relay's own runs are in test_list_policy_e2e) ---------

def test_the_policy_role_and_held_commands(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, hostname="relay.test")
    initialise(settings)
    engines = create_cli_engines(settings.resolved_database_url)
    try:
        make_list(Repository(engines), TEAM, ["ann@x.test"])
    finally:
        engines.dispose()
    runner = CliRunner(env={"MAILFLOW_DATA_DIR": str(tmp_path), "MAILFLOW_CONFIG": ""})

    def run(*args: str, status: int = 0) -> str:
        result = runner.invoke(cli, list(args))
        assert result.exit_code == status, result.output
        return result.output

    assert run("list", "update", TEAM, "--posting", "announce", "--non-member-action",
               "hold", "--hold-days", "3") == f"updated list {TEAM}\n"
    shown = json.loads(run("list", "show", TEAM, "--json"))
    assert (shown["posting"], shown["non_member_action"], shown["hold_days"]) == (
        "announce", "hold", 3)
    run("list", "update", TEAM, "--posting", "closed", status=2)
    assert main_exit(runner, "list", "update", TEAM, "--hold-days", "0") == 2
    assert run("member", "add", TEAM, "lead@x.test", "--role", "owner") == (
        f"added 1 member(s) to {TEAM}\n")
    assert run("member", "set-role", TEAM, "ann@x.test", "--role", "moderator") == (
        f"1 member(s) of {TEAM} now moderator\n")
    assert run("member", "list", TEAM) == ("ann@x.test\tactive\tmoderator\n"
                                           "lead@x.test\tactive\towner\n")
    assert [m["role"] for m in json.loads(run("member", "list", TEAM, "--json"))] == [
        "moderator", "owner"]
    assert json.loads(run("held", "ls", "--list", TEAM, "--json")) == []
    assert main_exit(runner, "held", "ls", "--list", "nobody@example.test") == 3
    assert main_exit(runner, "held", "approve", "nope") == 3
    assert main_exit(runner, "held", "reject", "nope", "--reason", "x") == 3
    assert main_exit(runner, "member", "set-role", TEAM, "zed@x.test", "--role",
                     "owner") == 3


def main_exit(runner: CliRunner, *args: str) -> int:
    """The exit status ``main`` gives a domain error (``invoke`` raises it instead)."""
    result = runner.invoke(cli, list(args))
    if isinstance(result.exception, MailflowError):
        return spec(result.exception).cli_exit
    return result.exit_code
