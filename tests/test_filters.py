"""Filter rules: each condition and action without a process, the regular expressions'
time budget on a 1 MB body, the cache in front of the store, validation, and the store
itself (rules, held messages) on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import random
import time
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import event

from mailflow import headers
from mailflow.blobs import content_hash
from mailflow.cli import cli
from mailflow.config import Settings
from mailflow.errors import FilterRejected, InvalidInput, NotFound, StorageUnavailable, spec
from mailflow.model import (
    Envelope,
    Event,
    FilterAction,
    FilterCondition,
    FilterRule,
    InboundMessage,
    MessageStatus,
)
from mailflow.pipeline.accept.filters import (
    _CLEAN_HEADER,
    INLINE_MAX_BYTES,
    Budget,
    MessageFilters,
    first_matches,
    one_part,
    structure_fields,
)
from mailflow.pipeline.context import Action, MessageContext
from mailflow.services.commit import IngestBatch, InlineExpansion, store_batch
from mailflow.services.directory import DirectoryService
from mailflow.services.filter_rules import FilterBook
from mailflow.services.installation import initialise
from mailflow.services.processor import expand_received
from mailflow.store import Repository, create_cli_engines
from mailflow.testing.clock import FakeClock
from mailflow.testing.factories import make_list

TEAM, OTHER = "team@example.test", "other@example.test"
H, B, S, A, N = (FilterCondition.HEADER, FilterCondition.BODY, FilterCondition.LARGER_THAN,
                 FilterCondition.ATTACHMENT, FilterCondition.NOT_ENCRYPTED)
REJECT, DISCARD, HOLD = FilterAction.REJECT, FilterAction.DISCARD, FilterAction.HOLD


def rule(condition: FilterCondition, argument: str = "", action: FilterAction = REJECT, *,
         header: str = "", text: str = "", target: str = TEAM) -> FilterRule:
    return FilterRule(target, condition, argument, action, header, text)


def mime(body: str = "Hello list.", *, subject: str = "hello",
         attachments: Sequence[tuple[str, str, bytes]] = ()) -> bytes:
    message = EmailMessage()
    message["From"] = "poster@outside.test"
    message["To"] = TEAM
    message["Subject"] = subject
    message.set_content(body, cte="base64")  # matched decoded, not as written
    for content_type, filename, data in attachments:
        maintype, subtype = content_type.split("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return message.as_bytes()


def matched(raw: bytes, *rules: FilterRule, timeout: float = 1.0) -> FilterRule | None:
    header = raw[:headers.header_length(raw)]
    return first_matches(raw, header, {TEAM: rules}, timeout).get(TEAM)


def read_as_one_part(raw: bytes) -> email.message.Message | None:
    header = raw[:headers.header_length(raw)]
    return one_part(raw, header)


# -- conditions -------------------------------------------------------------------------

def test_a_header_condition_matches_the_decoded_field_by_name_case_insensitively() -> None:
    raw = mime(subject="Réunion: BUY NOW")  # RFC 2047-encoded on the wire
    assert b"=?utf-8?" in raw  # encoded on the wire
    yes = rule(H, r"(?i)buy\s+now", header="subject")
    assert matched(raw, yes) == yes
    assert matched(raw, rule(H, "^Réunion", header="SUBJECT")) is not None
    assert matched(raw, rule(H, "buy now", header="subject")) is None  # case-sensitive
    assert matched(raw, rule(H, ".*", header="x-missing")) is None   # no such field


def test_a_body_condition_searches_the_decoded_text_parts_only() -> None:
    raw = mime("Cheap pills, act today", attachments=[("text/plain", "notes.txt",
                                                       b"secret attachment text")])
    assert b"Cheap pills" not in raw  # base64 on the wire
    assert matched(raw, rule(B, r"pills,\s+act")) is not None
    assert matched(raw, rule(B, "secret attachment")) is None  # an attachment is not body


def test_a_size_condition_is_strictly_larger_than() -> None:
    raw = mime()
    assert matched(raw, rule(S, str(len(raw) - 1))) is not None
    assert matched(raw, rule(S, str(len(raw)))) is None


def test_an_attachment_condition_globs_the_type_or_the_file_name() -> None:
    raw = mime(attachments=[("application/x-msdownload", "Setup.EXE", b"MZ\x90\x00")])
    assert matched(raw, rule(A, "*.exe")) is not None           # file name, any case
    assert matched(raw, rule(A, "application/x-ms*")) is not None  # MIME type
    assert matched(raw, rule(A, "*.zip")) is None
    assert matched(mime(), rule(A, "*")) is None                # no attachment at all


@pytest.mark.parametrize(("content_type", "encrypted"), [
    ('multipart/encrypted; protocol="application/pgp-encrypted"; boundary="b"', True),
    ('application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"', True),
    ('application/x-pkcs7-mime; name="smime.p7m"', True),
    ("application/pkcs7-mime; smime-type=signed-data", False),  # signed, readable
    ('multipart/signed; protocol="application/pgp-signature"; boundary="b"', False),
    ("text/plain", False),
])
def test_not_encrypted_means_neither_pgp_mime_nor_s_mime(content_type: str,
                                                        encrypted: bool) -> None:
    raw = f"From: a@x.test\r\nContent-Type: {content_type}\r\n\r\nopaque\r\n".encode()
    assert (matched(raw, rule(N)) is None) is encrypted


def test_a_rule_the_parser_cannot_apply_counts_as_no_match(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Should the ``email`` package ever raise on some MIME, the next rule decides."""
    from mailflow.pipeline.accept import filters

    def broken(self: filters.ParsedMessage) -> list[str]:
        raise ValueError("unparseable")

    monkeypatch.setattr(filters.ParsedMessage, "text_parts", broken)
    assert matched(mime("x"), rule(B, "x"), rule(S, "0", HOLD)) == rule(S, "0", HOLD)


def test_malformed_mime_is_judged_without_raising() -> None:
    raw = (b"From: a@x.test\r\nSubject: =?bogus?Q?=ZZ?=\r\nContent-Type: multipart/mixed\r\n"
           b"\r\nno boundary at all\r\n")
    assert matched(raw, rule(H, "bogus|ZZ", header="subject")) is not None
    assert matched(raw, rule(B, "boundary")) is not None  # read as one text part
    assert matched(raw, rule(A, "*")) is None


# -- order and actions ------------------------------------------------------------------

def test_the_first_matching_rule_decides() -> None:
    raw = mime("win a prize")
    first, second = rule(B, "nothing here", REJECT), rule(B, "prize", HOLD)
    assert matched(raw, first, second, rule(S, "0", DISCARD)) == second


async def test_the_step_decides_per_recipient_with_each_action() -> None:
    rules = Rules({TEAM: [rule(H, "offer", REJECT, header="subject", text="no offers here")],
                   OTHER: [rule(B, "prize", HOLD, target=OTHER)],
                   "third@example.test": [rule(S, "0", DISCARD, target="third@example.test",
                                               text="too big")]})
    step = MessageFilters(rules, 1.0)
    ctx = MessageContext.of(Envelope("a@x.test", (TEAM, OTHER, "third@example.test",
                                                  "fourth@example.test")),
                            mime("a prize", subject="an offer"))
    decided = await step(ctx, list(ctx.recipients.values()))
    assert rules.asked == [[TEAM, OTHER, "third@example.test", "fourth@example.test"]]
    refusal = decided[TEAM].error
    assert isinstance(refusal, FilterRejected) and refusal.smtp_reply() == (
        "550 5.7.1 no offers here")
    assert spec(refusal).http_status == 422
    assert decided[OTHER].action is Action.HOLD
    assert decided[OTHER].reason == f"filter rule of {OTHER} (body matches prize)"
    assert decided["third@example.test"].action is Action.DISCARD
    assert decided["third@example.test"].reason.endswith(": too big")
    assert "fourth@example.test" not in decided


async def test_without_rules_nothing_is_parsed() -> None:
    step = MessageFilters(Rules({}), 1.0)
    ctx = MessageContext.of(Envelope("a@x.test", (TEAM,)), mime())
    assert await step(ctx, list(ctx.recipients.values())) == {}
    assert step._pool is None  # no thread was started, no MIME walk


# -- the time bound ---------------------------------------------------------------------

BOUND = 0.3


async def test_a_catastrophic_pattern_on_a_1_mb_body_ends_within_its_bound() -> None:
    """``(a+)+$`` against a megabyte of ``a`` ending in ``!`` backtracks for ever; the
    budget stops it, it counts as no match, and the next rule still decides.  The event
    loop keeps turning meanwhile (the search runs on the filter pool without the GIL)."""
    body = "a" * (1024 * 1024) + "!"
    raw = (b"From: a@x.test\r\nSubject: x\r\nContent-Type: text/plain\r\n\r\n"
           + body.encode())
    rules = Rules({TEAM: [rule(B, "(a+)+$", REJECT), rule(S, "1000", HOLD)]})
    step = MessageFilters(rules, BOUND)
    ctx = MessageContext.of(Envelope("a@x.test", (TEAM,)), raw)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    decided = await step(ctx, list(ctx.recipients.values()))
    elapsed = time.monotonic() - started
    ticker.cancel()
    assert decided[TEAM].action is Action.HOLD  # the regex: no match; the size rule held
    # The bound plus parsing and decoding a megabyte, generously on a loaded machine;
    # unbounded, this search would not end in a lifetime.  The search alone is timed below.
    assert elapsed < BOUND + 10.0, elapsed
    assert ticks >= 5  # the loop was not blocked


def test_the_search_itself_stops_at_the_bound() -> None:
    """Timed in this thread's CPU time: the bound is wall-clock time, which a loaded
    machine stretches between the module's checks; the work done cannot exceed it."""
    text = "a" * (1024 * 1024) + "!"
    budget = Budget(BOUND)
    started = time.thread_time()
    assert budget.search("(a+)+$", text, rule(B, "(a+)+$")) is False
    assert time.thread_time() - started < BOUND + 0.25
    assert budget.exhausted


def test_every_regular_expression_of_a_message_shares_one_budget() -> None:
    body = "a" * 100_000 + "!"
    raw = f"From: a@x.test\r\nSubject: x\r\n\r\n{body}".encode()
    slow = [rule(B, "(a+)+$") for _ in range(10)]  # ten catastrophic rules
    started = time.thread_time()  # CPU time, as above
    assert matched(raw, *slow, timeout=0.2) is None
    assert time.thread_time() - started < 0.2 + 0.5  # not ten times the bound


# -- a small message of one part: on the event loop, without the MIME walk -------------

@pytest.mark.parametrize("raw", [
    b"From: a@x.test\r\nSubject: x\r\n\r\nbody\r\nline 2\r\n",
    b"From: a@x.test\nSubject: folded\n  on two lines\n\nbody\n\n\n",
    b"From: a@x.test\r\nSubject: no body\r\n",
    b"From: a@x.test\r\nContent-Type: text/plain;\r\n charset=latin-1\r\n\r\n8 bit \xff\r\n",
    b"Content-Type: TEXT/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable"
    b"\r\n\r\nh=C3=A9llo\r\n",
    b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; "
    b"filename=a.exe\r\n\r\nMZ",
])
def test_a_one_part_message_is_read_as_the_whole_parse_reads_it(raw: bytes) -> None:
    full = email.message_from_bytes(raw, policy=email.policy.compat32)
    fast = read_as_one_part(raw)
    assert fast is not None
    read = ("content-type", "content-transfer-encoding", "content-disposition")
    assert sorted(fast.items()) == sorted((k, v) for k, v in full.items()
                                          if k.lower() in read)
    assert (fast.get_content_type(), fast.get_content_charset(), fast.get_filename()) == (
        full.get_content_type(), full.get_content_charset(), full.get_filename())
    assert fast.get_payload() == full.get_payload()
    assert fast.get_payload(decode=True) == full.get_payload(decode=True)


@pytest.mark.parametrize("raw", [
    mime(attachments=[("text/plain", "a.txt", b"x")]),                       # multipart
    b"Content-Type: message/rfc822\r\n\r\nFrom: a@x.test\r\n\r\ninner\r\n",  # nested
    b"From: a@x.test\r\nno field, so the body begins here\r\n\r\nmore\r\n",
    b"From: a@x.test\n\r\n\r\nbody after a blank line of another ending\r\n",
    b"From a@x.test Mon Jan  1 00:00:00 2026\r\nFrom: a@x.test\r\n\r\nmbox\r\n",
    b"From: a@x.test\r\nSubject: no line break at the end",
])
def test_any_other_message_gets_the_whole_parse(raw: bytes) -> None:
    assert read_as_one_part(raw) is None


def test_the_structure_fields_are_those_of_the_whole_split() -> None:
    """Read by name from a clean header section, without splitting it into fields: the
    same fields, in the same order, as the split gives for those names."""
    rnd = random.Random(2045)
    names = ["Content-Type", "content-type", "CONTENT-TRANSFER-ENCODING",
             "Content-Disposition", "Content-Typo", "X-Content-Type", "Subject", "From"]
    values = ["text/plain", " multipart/mixed;", "", "x content-type: y"]
    clean = 0
    for _ in range(3_000):
        lines = []
        for _ in range(rnd.randint(0, 7)):
            lines.append(f"{rnd.choice(names)}:{rnd.choice(values)}{rnd.choice(EOLS)}")
            if rnd.random() < 0.3:
                lines.append(f"{rnd.choice(' ' + chr(9))}content-type: folded"
                             f"{rnd.choice(EOLS)}")
        header = "".join(lines).encode()
        fields = headers.fields_by_name(header)
        if _CLEAN_HEADER.fullmatch(header):
            clean += 1
            assert structure_fields(header) == tuple(
                field for name in (b"content-type", b"content-transfer-encoding",
                                   b"content-disposition")
                for field in fields.get(name, ())), header
    assert clean > 2_000


EOLS = ("\r\n", "\n")


async def test_a_small_one_part_message_is_decided_on_the_event_loop() -> None:
    rules = Rules({TEAM: [rule(H, "offer", header="subject"), rule(B, r"cheap\s+pills", HOLD)]})
    step = MessageFilters(rules, 1.0)
    ctx = MessageContext.of(Envelope("a@x.test", (TEAM,)), mime("cheap  pills"))
    decided = await step(ctx, list(ctx.recipients.values()))
    assert decided[TEAM].action is Action.HOLD
    assert step._pool is None  # no filter thread: no hop there and back


@pytest.mark.parametrize("raw", [
    mime("cheap pills", attachments=[("text/plain", "a.txt", b"x")]),  # a MIME walk to do
    mime("cheap pills " + "x" * INLINE_MAX_BYTES),                    # too large
])
async def test_other_messages_are_decided_on_the_filter_threads(raw: bytes) -> None:
    step = MessageFilters(Rules({TEAM: [rule(B, r"cheap\s+pills", HOLD)]}), 1.0)
    ctx = MessageContext.of(Envelope("a@x.test", (TEAM,)), raw)
    decided = await step(ctx, list(ctx.recipients.values()))
    assert decided[TEAM].action is Action.HOLD
    assert step._pool is not None


async def test_a_pattern_too_slow_for_the_event_loop_gets_the_whole_budget_on_a_thread(
        caplog: pytest.LogCaptureFixture) -> None:
    """``a*b|!`` tries every start of 10,000 ``a``: quadratic, far more than the event
    loop's short budget, well within the message's; it matches at the end."""
    raw = b"From: a@x.test\r\nSubject: x\r\n\r\n" + b"a" * 10_000 + b"!\r\n"
    assert len(raw) < INLINE_MAX_BYTES
    slow = rule(B, "a*b|!", HOLD)
    step = MessageFilters(Rules({TEAM: [slow]}), 60.0)
    ctx = MessageContext.of(Envelope("a@x.test", (TEAM,)), raw)
    decided = await step(ctx, list(ctx.recipients.values()))
    assert decided[TEAM].action is Action.HOLD
    assert step._pool is not None
    assert "ran out of time" not in caplog.text  # giving up on the loop is not a timeout


# -- the cache in front of the store ----------------------------------------------------

class Rules:
    """The step's side (``rules_for``) and the store's side of a :class:`FilterBook`."""

    def __init__(self, rules: dict[str, list[FilterRule]]) -> None:
        self.rules = rules
        self.asked: list[list[str]] = []
        self.counted = 0
        self.fail = False

    async def rules_for(self, targets: Sequence[str]) -> dict[str, Sequence[FilterRule]]:
        self.asked.append(list(targets))
        return {t: self.rules[t] for t in targets if self.rules.get(t)}

    async def fetch(self, targets: Sequence[str]) -> Sequence[FilterRule]:
        self.asked.append(list(targets))
        if self.fail:
            raise StorageUnavailable("store down")
        return [r for t in targets for r in self.rules.get(t, [])]

    async def count(self) -> int:
        self.counted += 1
        return sum(len(r) for r in self.rules.values())


async def test_the_book_counts_without_rules_and_asks_once_per_message_otherwise() -> None:
    rules = Rules({})
    clock = FakeClock()
    book = FilterBook(rules.fetch, rules.count, clock, ttl=2.0)
    for _ in range(5):
        assert await book.rules_for([TEAM, OTHER]) == {}
    assert (rules.counted, rules.asked) == (1, [])  # no rule anywhere: no query
    rules.rules[TEAM] = [rule(S, "0")]
    book.invalidate()  # a change through the directory in this process
    assert await book.rules_for([TEAM, OTHER]) == {TEAM: (rule(S, "0"),)}
    assert await book.rules_for([OTHER, TEAM]) == {TEAM: (rule(S, "0"),)}
    assert rules.asked == [[TEAM, OTHER]]  # one statement for both, then remembered
    clock.advance(2.5)
    await book.rules_for([TEAM, "new@example.test"])
    assert rules.asked[1:] == [[TEAM, "new@example.test"]]
    rules.fail = True
    clock.advance(2.5)
    with pytest.raises(StorageUnavailable):
        await book.rules_for([TEAM])


async def test_the_book_is_bounded_in_bytes() -> None:
    rules = Rules({f"l{i}@example.test": [rule(B, "x" * 500, target=f"l{i}@example.test")]
                   for i in range(50)})
    book = FilterBook(rules.fetch, rules.count, FakeClock(), ttl=60.0, max_bytes=5000)
    for i in range(50):
        await book.rules_for([f"l{i}@example.test"])
        assert book.size <= 5000


# -- validation -------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "words"), [
    ({}, "exactly one condition"),
    ({"body": "x", "larger_than": 3}, "exactly one condition"),
    ({"header": "Subject"}, "go together"),
    ({"header": "Sub ject", "matches": "x"}, "invalid header name"),
    ({"header": "Subject", "matches": "(unclosed"}, "invalid regular expression"),
    ({"body": ""}, "empty regular expression"),
    ({"larger_than": -1}, "invalid size"),
    ({"attachment": "  "}, "empty attachment"),
    ({"body": "x", "text": "ok\r\nBcc: victim@x.test"}, r"U\+000D"),
    ({"body": "x", "action": "bounce"}, "invalid action"),
])
def test_bad_rules_are_refused_with_the_reason(repo: Repository, kwargs: dict[str, object],
                                               words: str) -> None:
    make_list(repo, TEAM)
    kwargs = dict(kwargs)  # the parameters are shared by both backends' runs
    action = str(kwargs.pop("action", "reject"))
    with pytest.raises(InvalidInput, match=words):
        DirectoryService(repo).add_filter_rule(TEAM, action, **kwargs)  # type: ignore[arg-type]


# -- the store, on SQLite and PostgreSQL ------------------------------------------------

NOW = 1_800_000_000.0


def test_rules_are_stored_in_order_read_in_one_statement_and_removed(repo: Repository) -> None:
    make_list(repo, TEAM)
    make_list(repo, OTHER)
    changes: list[int] = []
    directory = DirectoryService(repo, FakeClock(NOW), on_rules_changed=lambda: changes.append(1))
    directory.add_filter_rule(TEAM, "hold", header="Subject:", matches="(?i)offer")
    directory.add_filter_rule("Team@Example.test", "reject", body="pills", text="no spam")
    directory.add_filter_rule(TEAM, "discard", not_encrypted=True)
    directory.add_filter_rule(OTHER, "reject", attachment="*.EXE")
    with pytest.raises(NotFound) as missing:
        directory.add_filter_rule("nobody@example.test", "hold", larger_than=10)
    assert missing.value.kind == "list"
    assert [(r.condition, r.header, r.argument, r.action, r.text)
            for r in directory.filter_rules(TEAM)] == [
        (H, "subject", "(?i)offer", HOLD, ""), (B, "", "pills", REJECT, "no spam"),
        (N, "", "", DISCARD, "")]
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(repo.engines.reader, "before_cursor_execute", count)
    try:
        found = repo.filter_rules_for([TEAM, OTHER, "x@example.test"])
    finally:
        event.remove(repo.engines.reader, "before_cursor_execute", count)
    assert len([s for s in statements if "filter_rules" in s]) == 1
    assert [(r.target, r.argument) for r in found] == [
        (OTHER, "*.exe"), (TEAM, "(?i)offer"), (TEAM, "pills"), (TEAM, "")]
    assert repo.count_filter_rules() == 4
    removed = directory.remove_filter_rule(TEAM, 2)
    assert removed.argument == "pills"
    assert [r.condition for r in directory.filter_rules(TEAM)] == [H, N]  # renumbered
    with pytest.raises(NotFound, match="no filter rule 3"):
        directory.remove_filter_rule(TEAM, 3)
    directory.delete_list(OTHER)  # a list's rules go with it
    assert repo.count_filter_rules() == 2
    assert len(changes) == 6


def _message(message_id: str, status: MessageStatus, data: bytes) -> InboundMessage:
    return InboundMessage(message_id, "poster@outside.test", (TEAM,), content_hash(data),
                          len(data), NOW, "127.0.0.1", "client.test", "ESMTP", status=status)


def test_a_held_message_waits_until_released_or_discarded(repo: Repository) -> None:
    make_list(repo, TEAM, ["ann@members.test"])
    data = b"Subject: x\r\n\r\nheld\r\n"
    held, other = (_message("m1", MessageStatus.HELD, data),
                   _message("m2", MessageStatus.HELD, data))
    stored = store_batch(repo, IngestBatch(
        [held, other], bodies={held.blob: data},
        events=[Event("held", f"{TEAM}: filter rule", "m1")]), NOW, lambda: None,
        InlineExpansion(100))
    assert stored.left == 0  # not waiting for the processor either
    assert repo.message_counts()["held"] == 2
    assert expand_received(repo, NOW, 10) == 0
    assert [(m.id, m.rcpt_tos, m.reason) for m in repo.held_messages()] == [
        ("m1", (TEAM,), f"{TEAM}: filter rule"), ("m2", (TEAM,), "")]
    directory = DirectoryService(repo, FakeClock(NOW))
    directory.release_held("m1")
    assert expand_received(repo, NOW, 10) == 1
    assert [d.recipient for d in repo.list_deliveries(10)] == ["ann@members.test"]
    directory.discard_held("m2")
    assert repo.message_counts()["held"] == 0 and repo.message_counts()["done"] == 1
    kinds = [kind for _, kind, _ in repo.message_events("m2")]
    assert kinds == ["received", "discarded"]
    with pytest.raises(NotFound, match="no held message m2"):
        directory.release_held("m2")
    with pytest.raises(NotFound):
        directory.discard_held("m1")  # released: no longer held


# -- the commands -----------------------------------------------------------------------

def test_the_filter_and_held_commands(tmp_path: Path) -> None:
    """In-process (a command costs a second as a process on a loaded machine); the
    refusals' exit statuses go through ``main``, as ``test_cli`` shows for the others."""
    settings = Settings(data_dir=tmp_path, hostname="relay.test")
    initialise(settings)
    engines = create_cli_engines(settings.resolved_database_url)
    try:
        make_list(Repository(engines), TEAM)
    finally:
        engines.dispose()
    runner = CliRunner(env={"MAILFLOW_DATA_DIR": str(tmp_path), "MAILFLOW_CONFIG": ""})

    def run(*args: str) -> str:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    assert run("filter", "add", TEAM, "--larger-than", "100000", "--action", "discard") == (
        f"added filter rule 1 to {TEAM}: larger than 100000 bytes -> discard\n")
    run("filter", "add", TEAM, "--attachment", "*.exe", "--action", "reject", "--text", "no")
    assert run("filter", "ls", TEAM) == ("1\tlarger than 100000 bytes\tdiscard\n"
                                         "2\tattachment *.exe\treject\tno\n")
    assert [r["condition"] for r in json.loads(run("filter", "ls", TEAM, "--json"))] == [
        "larger_than", "attachment"]
    assert run("filter", "remove", TEAM, "1") == (
        f"removed filter rule 1 of {TEAM}: larger than 100000 bytes\n")
    assert json.loads(run("held", "ls", "--json")) == []
    with pytest.raises(NotFound):
        runner.invoke(cli, ["held", "discard", "nope"], catch_exceptions=False)
    bad = runner.invoke(cli, ["filter", "add", TEAM, "--action", "hold"])
    assert isinstance(bad.exception, InvalidInput)
    assert spec(bad.exception).cli_exit == 2
