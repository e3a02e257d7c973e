"""Sender block and allow entries: patterns, scopes and precedence, the accept step, the
cache in front of the store, the RCPT answers (SMTP, the relay's child, the Postfix policy
service), and the store itself on SQLite and PostgreSQL.

Everything but the store tests runs without a process or a database: the entries come
from a list, matched with :func:`fnmatch.fnmatchcase` (which the store's LIKE must agree
with: see ``test_the_store_matches_like_fnmatch``).
"""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from sqlalchemy import event

from mailflow.child.listeners import RemoteAcceptor
from mailflow.child.messages import CheckRecipient, Question, RecipientChecked
from mailflow.config import Settings
from mailflow.errors import (
    EX_NOUSER,
    Conflict,
    InvalidInput,
    NotFound,
    SenderBlocked,
    StorageUnavailable,
    UnknownRecipient,
)
from mailflow.ingress.pipe import PipeResult, submit_to_store
from mailflow.ingress.policy import decide
from mailflow.model import (
    Envelope,
    Event,
    ListKind,
    MailingList,
    Resolution,
    RuleAction,
    RuleScope,
    SenderRule,
)
from mailflow.pipeline.accept.blocklist import SenderBlocklist, blocking_rule, deciding_rule
from mailflow.pipeline.context import Action, Decision, MessageContext
from mailflow.services.accept import AcceptPolicy, AcceptService
from mailflow.services.directory import DirectoryService, validated_pattern
from mailflow.services.installation import initialise
from mailflow.services.sender_rules import SenderRuleBook
from mailflow.store import Repository, create_cli_engines
from mailflow.testing.clock import FakeClock
from mailflow.testing.factories import make_list

BLOCK, ALLOW = RuleAction.BLOCK, RuleAction.ALLOW
RAW = b"From: x@spam.example\r\nSubject: hi\r\n\r\nbody\r\n"
TEAM = MailingList(1, "team@example.test", ListKind.LIST, "Team", 0, 0.0)
OTHER = MailingList(2, "other@example.test", ListKind.ALIAS, "", 0, 0.0)
DIRECTORY = {
    "team@example.test": Resolution("list", TEAM),
    "other@example.test": Resolution("list", OTHER),
    "nobody@example.test": Resolution("unknown_address"),
    "x@elsewhere.test": Resolution("unknown_domain"),
}
POLICY = AcceptPolicy("abc", max_message_size=10_000, max_received_headers=3,
                      recipient_cache_ttl=2.0)


async def lookup(canonical: str) -> Resolution:
    return DIRECTORY[canonical]


class Entries:
    """The store's side of a :class:`SenderRuleBook`: a list of entries, counting the
    questions it is asked (each stands for one query)."""

    def __init__(self, *rules: SenderRule) -> None:
        self.rules = list(rules)
        self.fetched: list[str] = []
        self.counted = 0
        self.fail = False

    async def fetch(self, sender: str) -> Sequence[SenderRule]:
        self.fetched.append(sender)
        if self.fail:
            raise StorageUnavailable("store down")
        return [r for r in self.rules if fnmatch.fnmatchcase(sender, r.pattern)]

    async def count(self) -> int:
        self.counted += 1
        return len(self.rules)

    def book(self, clock: FakeClock | None = None, ttl: float = 2.0,
             max_bytes: int = 1 << 20) -> SenderRuleBook:
        return SenderRuleBook(self.fetch, self.count, clock or FakeClock(), ttl, max_bytes)


def rule(action: RuleAction, pattern: str, target: str = "") -> SenderRule:
    return SenderRule(action, pattern, target)


# -- patterns ---------------------------------------------------------------------------

@pytest.mark.parametrize(("typed", "stored"), [
    ("*@Spam.Example", "*@spam.example"), ("noreply@*.example", "noreply@*.example"),
    ("news@example.*", "news@example.*"), (" Bob@Example.NET ", "bob@example.net"),
    ("*", "*"), ("*spam*", "*spam*"), ("b?b@x.test", "b?b@x.test"),
    ("100%_off@x.test", "100%_off@x.test"), ("élodie@exemple.fr", "élodie@exemple.fr"),
])
def test_valid_patterns_are_kept_in_lower_case(typed: str, stored: str) -> None:
    assert validated_pattern(typed) == stored


@pytest.mark.parametrize(("typed", "words"), [
    ("", "empty"), ("   ", "empty"), ("spam.example", "write *@spam.example"),
    ("a@b@c", "more than one @"), ("a b@x.test", "U+0020"), ("a@x.test\r\nBcc: v", "U+000D"),
    ("[a-z]*@x.test", "'['"), ("<a@x.test>", "'<'"), ("a\\*@x.test", "'\\\\'"),
    ("a" * 318 + "@x.t", "too long"),
])
def test_invalid_patterns_are_refused_with_the_reason(typed: str, words: str) -> None:
    with pytest.raises(InvalidInput, match="pattern") as refused:
        validated_pattern(typed)
    assert words in str(refused.value)


# -- which entry decides ----------------------------------------------------------------

RECIPIENT = "team@example.test"


@pytest.mark.parametrize(("rules", "blocked_by"), [
    ([], None),
    ([rule(BLOCK, "*@spam.example")], 0),                                 # global
    ([rule(BLOCK, "*", "example.test")], 0),                              # domain
    ([rule(BLOCK, "*", RECIPIENT)], 0),                                   # address
    ([rule(BLOCK, "*", "other.test"), rule(BLOCK, "*", "other@example.test")], None),
    # An allow entry beats a block entry of the same scope ...
    ([rule(BLOCK, "*@spam.example"), rule(ALLOW, "x@spam.example")], None),
    ([rule(BLOCK, "*", "example.test"), rule(ALLOW, "x@*", "example.test")], None),
    ([rule(BLOCK, "*", RECIPIENT), rule(ALLOW, "*@spam.example", RECIPIENT)], None),
    # ... and of a wider scope,
    ([rule(BLOCK, "*"), rule(ALLOW, "*", "example.test")], None),
    ([rule(BLOCK, "*"), rule(BLOCK, "*", "example.test"), rule(ALLOW, "*", RECIPIENT)], None),
    # but not a block entry of a narrower scope: the narrowest scope decides.
    ([rule(ALLOW, "*"), rule(BLOCK, "*", "example.test")], 1),
    ([rule(ALLOW, "*", "example.test"), rule(BLOCK, "x@*", RECIPIENT)], 1),
    ([rule(ALLOW, "*"), rule(ALLOW, "*", "example.test"), rule(BLOCK, "*", RECIPIENT)], 2),
])
def test_the_narrowest_scope_decides_and_allow_wins_a_tie(rules: list[SenderRule],
                                                          blocked_by: int | None) -> None:
    expected = None if blocked_by is None else rules[blocked_by]
    for ordered in (rules, rules[::-1]):  # the order of the store's rows does not matter
        assert blocking_rule(ordered, RECIPIENT) == expected
        decided = deciding_rule(ordered, RECIPIENT)
        assert decided is None or decided.action is (ALLOW if expected is None else BLOCK)


def test_scopes() -> None:
    assert [rule(BLOCK, "*", t).scope for t in ("", "example.test", RECIPIENT)] == [
        RuleScope.GLOBAL, RuleScope.DOMAIN, RuleScope.ADDRESS]
    # A domain entry covers that domain only, not its subdomains or a lookalike address.
    assert blocking_rule([rule(BLOCK, "*", "example.test")], "a@sub.example.test") is None
    assert blocking_rule([rule(BLOCK, "*", "example.test")], "example.test@x.test") is None


def test_an_entry_for_an_address_covers_it_with_any_plus_tag() -> None:
    """``list+tag@d`` reaches the list: a tag must not be a way around its entries."""
    local, domain = RECIPIENT.split("@")
    tagged = f"{local}+anything@{domain}"
    assert blocking_rule([rule(BLOCK, "*", RECIPIENT)], tagged) is not None
    assert blocking_rule([rule(BLOCK, "*", RECIPIENT), rule(ALLOW, "*", tagged)], tagged) is None
    assert blocking_rule([rule(BLOCK, "*", tagged)], RECIPIENT) is None


# -- the accept step --------------------------------------------------------------------

def context(*rcpts: str, sender: str = "x@spam.example") -> MessageContext:
    return MessageContext.of(Envelope(sender, rcpts), RAW, submitted=True)


async def decide_step(entries: Entries, ctx: MessageContext) -> Mapping[str, Decision]:
    step = SenderBlocklist(entries.book())
    return await step(ctx, list(ctx.recipients.values()))


async def test_a_sender_blocked_for_every_recipient_is_refused_with_5_7_1() -> None:
    entries = Entries(rule(BLOCK, "*@spam.example"))
    decided = await decide_step(entries, context("Team@example.test"))
    decision = decided["team@example.test"]
    assert decision.action is Action.REJECT
    error = decision.error
    assert isinstance(error, SenderBlocked) and error.smtp_reply() == (
        "550 5.7.1 sender <x@spam.example> is blocked for <Team@example.test>")
    decided = await decide_step(entries, context("team@example.test", "other@example.test"))
    assert {str(d.error) for d in decided.values()} == {
        "sender <x@spam.example> is blocked for every recipient of this message"}


async def test_blocked_for_some_recipients_discards_those_with_the_entry_named() -> None:
    entries = Entries(rule(BLOCK, "*@spam.example", "other@example.test"))
    decided = await decide_step(entries, context("team@example.test", "other@example.test"))
    assert list(decided) == ["other@example.test"]
    decision = decided["other@example.test"]
    assert decision.action is Action.DISCARD
    assert decision.reason == (
        "sender <x@spam.example> blocked by the block entry *@spam.example for "
        "other@example.test")


async def test_the_step_asks_once_per_message_and_never_for_the_null_sender() -> None:
    entries = Entries(rule(BLOCK, "*"))
    five = [f"r{i}@example.test" for i in range(5)]
    ctx = context(*five, sender="X@Spam.Example")
    assert len(await decide_step(entries, ctx)) == 5
    assert entries.fetched == ["x@spam.example"]  # canonical, and once for five recipients
    # The null sender, and Postfix's pipe name for it, are never judged, even by "*".
    for null in ("", "<>", "MAILER-DAEMON"):
        assert await decide_step(entries, context(*five, sender=null)) == {}
    assert entries.fetched == ["x@spam.example"]


# -- the cache in front of the store ----------------------------------------------------

async def test_without_entries_the_store_is_counted_once_per_ttl_and_never_queried() -> None:
    clock = FakeClock()
    entries = Entries()
    book = entries.book(clock)
    for _ in range(100):
        assert await book.matching("x@spam.example") == ()
    assert (entries.counted, entries.fetched, book.empty) == (1, [], True)
    clock.advance(2.0)
    await book.matching("x@spam.example")
    assert entries.counted == 2


async def test_a_new_entry_takes_effect_within_the_ttl() -> None:
    """The bound docs/rules.md promises: another process's ``mailflow block add`` is
    seen after at most ``recipient_cache_ttl``, whatever was remembered before."""
    clock = FakeClock()
    entries = Entries(rule(BLOCK, "*@other.example"))
    book = entries.book(clock)
    assert await book.matching("x@spam.example") == ()          # remembered: no entry
    entries.rules.append(rule(BLOCK, "*@spam.example"))          # added elsewhere
    clock.advance(1.99)
    assert await book.matching("x@spam.example") == ()
    clock.advance(0.01)
    assert [r.pattern for r in await book.matching("x@spam.example")] == ["*@spam.example"]
    # From no entries at all to one: the count is what is remembered.
    clock, entries = FakeClock(), Entries()
    book = entries.book(clock)
    assert await book.matching("x@spam.example") == ()
    entries.rules.append(rule(BLOCK, "*@spam.example"))
    clock.advance(2.0)
    assert len(await book.matching("x@spam.example")) == 1
    # A directory service in this process forgets at once.
    entries.rules.clear()
    book.invalidate()
    assert await book.matching("x@spam.example") == ()


async def test_entries_are_fetched_once_per_sender_per_ttl_within_a_byte_bound() -> None:
    clock = FakeClock()
    entries = Entries(rule(BLOCK, "*@spam.example"), rule(ALLOW, "*"))
    book = entries.book(clock, max_bytes=2000)
    for _ in range(3):
        assert len(await book.matching("a@spam.example")) == 2
    assert entries.fetched == ["a@spam.example"]
    for i in range(50):  # more senders than the bound holds: the oldest go first
        await book.matching(f"s{i}@x.test")
    assert book.size <= 2000 and "s49@x.test" in book._by_sender
    assert "a@spam.example" not in book._by_sender
    await book.matching("a@spam.example")
    assert entries.fetched.count("a@spam.example") == 2
    clock.advance(2.0)
    await book.matching("s49@x.test")
    assert entries.fetched.count("s49@x.test") == 2
    # ttl 0 (``mailflow pipe``): one query per question, no count.
    uncached = entries.book(ttl=0)
    await uncached.matching("a@spam.example")
    await uncached.matching("a@spam.example")
    assert entries.fetched.count("a@spam.example") == 4 and entries.counted == 2


async def test_concurrent_questions_share_one_count_and_a_failure_is_temporary() -> None:
    entries = Entries()
    gate = asyncio.Event()
    count = entries.count

    async def slow_count() -> int:
        await gate.wait()
        return await count()

    book = SenderRuleBook(entries.fetch, slow_count, FakeClock(), 2.0)
    waiting = [asyncio.ensure_future(book.matching(f"s{i}@x.test")) for i in range(10)]
    await asyncio.sleep(0)
    waiting[0].cancel()  # a client that left must not cancel the others' count
    gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert results[1:] == [()] * 9 and entries.counted == 1
    entries.rules.append(rule(BLOCK, "*"))
    entries.fail = True
    book.invalidate()
    with pytest.raises(StorageUnavailable):
        await book.matching("s1@x.test")


# -- the accept service: RCPT, DATA, submissions ----------------------------------------

class RecordingCommitter:
    def __init__(self) -> None:
        self.stored: list[tuple[tuple[str, ...], list[Event]]] = []

    async def commit(self, message: object, data: bytes, events: Sequence[Event] = ()) -> None:
        self.stored.append((message.rcpt_tos, list(events)))  # type: ignore[attr-defined]


def service(entries: Entries) -> tuple[AcceptService, RecordingCommitter]:
    committer = RecordingCommitter()
    clock = FakeClock()
    return AcceptService(lookup, committer, clock, POLICY,
                         rules=entries.book(clock)), committer


async def test_rcpt_refuses_a_blocked_sender_per_recipient_with_one_query() -> None:
    entries = Entries(rule(BLOCK, "*@spam.example", "team@example.test"),
                      rule(ALLOW, "friend@spam.example", "team@example.test"))
    accept, committer = service(entries)
    with pytest.raises(SenderBlocked, match=r"sender <x@spam\.example> is blocked for "
                                            r"<Team@example\.test>"):
        await accept.check_recipient("Team@example.test", "X@Spam.example")
    await accept.check_recipient("other@example.test", "x@spam.example")
    await accept.check_recipient("team@example.test", "friend@spam.example")  # allowed
    await accept.check_recipient("team@example.test", "")  # a bounce: nobody to judge
    with pytest.raises(UnknownRecipient):  # an unknown address is 5.1.1, whoever sends
        await accept.check_recipient("nobody@example.test", "y@spam.example")
    assert not accept.answers_for_every_sender()
    # The transaction's RCPTs and its DATA share the sender's one query.
    await accept.accept(Envelope("x@spam.example", ("other@example.test",)), RAW)
    assert entries.fetched == ["x@spam.example", "friend@spam.example"]
    assert committer.stored == [(("other@example.test",), [])]


async def test_a_submission_blocked_for_some_is_stored_for_the_others_with_an_event() -> None:
    entries = Entries(rule(BLOCK, "*@spam.example", "team@example.test"))
    accept, committer = service(entries)
    await accept.submit(Envelope("x@spam.example", ("team@example.test", "other@example.test"),
                                 protocol="HTTP"), RAW)
    [(rcpts, events)] = committer.stored
    assert rcpts == ("other@example.test",)
    assert [(e.kind, e.detail.split(":")[0]) for e in events] == [
        ("discarded", "team@example.test")]
    with pytest.raises(SenderBlocked):  # blocked for its only recipient: refused (422)
        await accept.submit(Envelope("x@spam.example", ("team@example.test",)), RAW)
    # LMTP after DATA: blocked for every recipient, each gets the refusal.
    entries.rules.append(rule(BLOCK, "x@*", "other@example.test"))
    accept, committer = service(entries)
    verdicts = await accept.accept_each(
        Envelope("x@spam.example", ("team@example.test", "other@example.test")), RAW)
    assert [type(v.error) for v in verdicts] == [SenderBlocked, SenderBlocked]
    assert committer.stored == []


async def test_the_policy_service_rejects_a_blocked_sender_with_5_7_1() -> None:
    accept, _ = service(Entries(rule(BLOCK, "*@spam.example", "example.test")))
    request = {"request": "smtpd_access_policy", "protocol_state": "RCPT",
               "recipient": "team@example.test"}
    assert await decide(accept, {**request, "sender": "x@spam.example"}) == (
        "REJECT 5.7.1 sender <x@spam.example> is blocked for <team@example.test>")
    assert await decide(accept, {**request, "sender": "x@ham.example"}) == "DUNNO"
    assert await decide(accept, {**request, "sender": ""}) == "DUNNO"


async def test_mailflow_pipe_checks_the_store_s_entries(tmp_path: Path) -> None:
    """The pipe's own accept service (no relay, no cache) asks the store: exit 67."""
    settings = Settings(data_dir=tmp_path, hostname="relay.test")
    await asyncio.to_thread(initialise, settings)
    engines = create_cli_engines(settings.resolved_database_url)
    try:
        repo = Repository(engines)
        make_list(repo, "team@example.test", ["ann@members.test"])
        DirectoryService(repo).add_sender_rule(BLOCK, "*@spam.example", "team@example.test")
    finally:
        engines.dispose()
    envelope = Envelope("X@spam.example", ("team@example.test",), protocol="PIPE")
    assert await submit_to_store(settings, envelope, RAW) == PipeResult(
        EX_NOUSER, "5.7.1 sender <x@spam.example> is blocked for <team@example.test>")
    taken = await submit_to_store(settings, Envelope("x@ham.example", envelope.rcpt_tos), RAW)
    assert taken.status == 0


# -- the relay's child remembers answers per sender while entries exist ------------------

class Relay:
    """The relay's side of the socketpair: answers each question at once."""

    def __init__(self, any_sender: bool) -> None:
        self.any_sender = any_sender
        self.asked: list[tuple[str, str]] = []
        self.acceptor: RemoteAcceptor | None = None

    def send(self, message: Question) -> None:
        assert isinstance(message, CheckRecipient) and self.acceptor is not None
        self.asked.append((message.sender, message.address))
        answer = RecipientChecked(message.number, True, self.any_sender)
        asyncio.get_running_loop().call_soon(self.acceptor.answered, answer)


async def test_the_child_remembers_a_recipient_for_its_sender_only_while_entries_exist(
        ) -> None:
    relay = Relay(any_sender=True)
    relay.acceptor = acceptor = RemoteAcceptor(relay, recipient_cache_ttl=60)
    await acceptor.check_recipient("team@example.test", "a@x.test")
    await acceptor.check_recipient("team@example.test", "b@x.test")  # remembered for all
    assert relay.asked == [("a@x.test", "team@example.test")]
    relay.any_sender = False  # entries exist (the relay's count went past 0)
    await acceptor.check_recipient("other@example.test", "a@x.test")
    await acceptor.check_recipient("other@example.test", "A@X.test")  # same sender
    await acceptor.check_recipient("other@example.test", "b@x.test")  # asked again
    await acceptor.check_recipient("team@example.test", "c@x.test")   # forgotten for all
    assert relay.asked[1:] == [("a@x.test", "other@example.test"),
                               ("b@x.test", "other@example.test"),
                               ("c@x.test", "team@example.test")]


# -- the store, on SQLite and PostgreSQL ------------------------------------------------

NOW = 1_800_000_000.0

MATCHES = [
    ("*@spam.example", "a@spam.example", True), ("*@spam.example", "a@sub.spam.example", False),
    ("*@spam.example", "a@spam.example.org", False),
    ("noreply@*.example", "noreply@mail.example", True),
    ("noreply@*.example", "noreply@a.b.example", True),
    ("noreply@*.example", "noreply@example", False),
    ("noreply@*.example", "xnoreply@mail.example", False),
    ("news@example.*", "news@example.org", True), ("news@example.*", "news@example.co.uk", True),
    ("news@example.*", "news@exampleXorg", False), ("b?b@x.test", "bob@x.test", True),
    ("b?b@x.test", "boob@x.test", False), ("a_b@x.test", "axb@x.test", False),
    ("a_b@x.test", "a_b@x.test", True), ("100%@x.test", "100abc@x.test", False),
    ("100%@x.test", "100%@x.test", True), ("*", "anyone@anywhere.test", True),
    ("*spam*", "spammer@x.test", True), ("élodie@*", "élodie@exemple.fr", True),
    ("?lodie@*", "élodie@exemple.fr", True),
]


def test_the_store_matches_like_fnmatch(repo: Repository) -> None:
    """The store's LIKE and :func:`fnmatch.fnmatchcase` (the shell's rules, which the
    unit tests above use) agree on every form, and one statement answers."""
    for pattern in sorted({p for p, _, _ in MATCHES}):
        repo.add_sender_rule(SenderRule(BLOCK, pattern, "", NOW))
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(repo.engines.reader, "before_cursor_execute", count)
    try:
        for pattern, sender, expected in MATCHES:
            assert fnmatch.fnmatchcase(sender, pattern) is expected
            found = {r.pattern for r in repo.sender_rules_matching(sender)}
            assert (pattern in found) is expected, (pattern, sender)
    finally:
        event.remove(repo.engines.reader, "before_cursor_execute", count)
    assert len([s for s in statements if "sender_rules" in s]) == len(MATCHES)
    assert repo.count_sender_rules() == len({p for p, _, _ in MATCHES})


def test_entries_are_validated_stored_listed_and_removed(repo: Repository) -> None:
    changes: list[int] = []
    directory = DirectoryService(repo, FakeClock(NOW),
                                 on_rules_changed=lambda: changes.append(1))
    directory.add_domain("example.test")
    directory.create_list("team@example.test")
    directory.add_sender_rule("block", "*@Spam.example")
    directory.add_sender_rule(BLOCK, "noreply@*.example", "Example.TEST")
    directory.add_sender_rule(ALLOW, "news@example.*", "Team@example.test")
    directory.add_sender_rule(ALLOW, "*@spam.example")  # both lists may hold a pattern
    with pytest.raises(Conflict, match="on the block list for every recipient already"):
        directory.add_sender_rule(BLOCK, "*@SPAM.example")
    with pytest.raises(NotFound, match="not served"):
        directory.add_sender_rule(BLOCK, "*@x.test", "unknown.test")
    with pytest.raises(NotFound) as missing:
        directory.add_sender_rule(BLOCK, "*@x.test", "nobody@example.test")
    assert missing.value.kind == "list"
    with pytest.raises(InvalidInput):
        directory.add_sender_rule(BLOCK, "*@x.test", "not an address@")
    with pytest.raises(InvalidInput):
        directory.add_sender_rule("deny", "*@x.test")
    assert [(r.action, r.pattern, r.target, r.created_at) for r in directory.sender_rules()] == [
        (ALLOW, "*@spam.example", "", NOW), (BLOCK, "*@spam.example", "", NOW),
        (BLOCK, "noreply@*.example", "example.test", NOW),
        (ALLOW, "news@example.*", "team@example.test", NOW)]
    assert [r.pattern for r in directory.sender_rules(BLOCK, "example.test")] == [
        "noreply@*.example"]
    assert len(changes) == 4
    with pytest.raises(NotFound, match=r"not on the block list for team@example\.test") as gone:
        directory.remove_sender_rule(BLOCK, "news@example.*", "team@example.test")
    assert gone.value.kind == "rule"
    directory.remove_sender_rule(ALLOW, "*@SPAM.example")
    assert [r.action for r in repo.sender_rules_matching("a@spam.example")] == [BLOCK]
    # A list's and a domain's entries go with them.
    directory.delete_list("team@example.test")
    assert repo.sender_rules(target="team@example.test") == []
    directory.remove_domain("example.test")
    assert [r.pattern for r in directory.sender_rules()] == ["*@spam.example"]
    assert len(changes) == 7
