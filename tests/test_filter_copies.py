"""The filter actions that change copies, ``tag`` and ``strip``, without a process: which
rule applies, the copies they render (attachments cut byte for byte, the note part,
sealed parts untouched), the accept step letting them through, and their validation.
"""

from __future__ import annotations

import asyncio
import email
from email.message import EmailMessage
from email.policy import default as default_policy

import pytest

from mailflow.errors import InvalidInput
from mailflow.model import (
    Envelope,
    FilterAction,
    FilterCondition,
    FilterRule,
    InboundMessage,
    ListKind,
    MailingList,
)
from mailflow.pipeline.accept.filters import MessageFilters
from mailflow.pipeline.chain import render_copy, rendering_variant
from mailflow.pipeline.context import Identity, MessageContext
from mailflow.pipeline.send.filter_actions import applied_rule, copy_rules
from mailflow.services.directory import DirectoryService, validated_tag_field
from mailflow.store import Repository
from mailflow.testing.factories import make_list

TEAM = "team@example.test"
IDENTITY = Identity("abc", "relay.test")
TEAM_LIST = MailingList(8, TEAM, ListKind.LIST, "Team", 0, 0.0)
A, H = FilterCondition.ATTACHMENT, FilterCondition.HEADER
TAG, STRIP, REJECT = FilterAction.TAG, FilterAction.STRIP, FilterAction.REJECT

EXE = (b"Content-Type: application/x-msdownload; name=\"setup.exe\"\r\n"
       b"Content-Disposition: attachment; filename=\"setup.exe\"\r\n"
       b"Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAA")
TEXT = b"Content-Type: text/plain; charset=us-ascii\r\n\r\nSee the files.\r\n"
PDF = (b"Content-Type: application/pdf; name=\"a.pdf\"\r\n"
       b"Content-Disposition: attachment; filename=\"a.pdf\"\r\n"
       b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5n")
SIGNED = (b"Content-Type: multipart/signed; boundary=\"sig\"; protocol=\"application/"
          b"pgp-signature\"\r\n\r\n--sig\r\n" + EXE + b"\r\n--sig\r\nContent-Type: "
          b"application/pgp-signature\r\n\r\n-----BEGIN PGP SIGNATURE-----\r\n--sig--")
HEAD = (b"From: Ann <ann@x.test>\r\nTo: team@example.test\r\nSubject: files\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n")


def mixed(*parts: bytes) -> bytes:
    return (HEAD + b"\r\nPreamble.\r\n" + b"".join(b"--outer\r\n" + p + b"\r\n" for p in parts)
            + b"--outer--\r\nEpilogue.\r\n")


def rule(action: FilterAction, argument: str = "*.exe", condition: FilterCondition = A, *,
         header: str = "", text: str = "", rule_id: int = 1) -> FilterRule:
    return FilterRule(TEAM, condition, argument, action, header, text, id=rule_id)


def message() -> InboundMessage:
    return InboundMessage("q1", "ann@x.test", (TEAM,), "h", 0, 1_800_000_000.0,
                          "127.0.0.1", "client.test", "ESMTP")


def rendered(raw: bytes, applied: FilterRule | None) -> bytes:
    return render_copy(raw, message(), TEAM_LIST, IDENTITY, filter_rule=applied)


def parse(raw: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(raw, policy=default_policy)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_the_first_matching_rule_applies_to_copies_only_if_it_tags_or_strips() -> None:
    raw = mixed(TEXT, EXE)
    tag = rule(TAG, "(?i)files", H, header="subject", text="X-Filtered: yes", rule_id=2)
    assert applied_rule(raw, [rule(STRIP, "*.pdf"), tag], 1.0) == tag
    assert applied_rule(raw, [rule(REJECT), tag], 1.0) is None  # the reject decided first
    assert copy_rules([rule(REJECT)]) == ()  # copies do not depend on reject rules alone
    both = copy_rules([rule(REJECT), tag])
    assert rendering_variant(TEAM_LIST, rules=both) != rendering_variant(TEAM_LIST)
    assert rendering_variant(TEAM_LIST, rules=both) != rendering_variant(
        TEAM_LIST, rules=[rule(REJECT), rule(TAG, text="X-Filtered: no", rule_id=2)])


def test_strip_cuts_matching_attachments_and_keeps_every_other_byte() -> None:
    raw = mixed(TEXT, EXE, PDF)
    copy = rendered(raw, rule(STRIP))
    note_at = copy.index(b"\r\n--outer\r\nContent-Type: text/plain; charset=\"utf-8\"")
    # Everything before the note is the original without the .exe part and its boundary.
    assert copy[copy.index(HEAD):note_at] == raw[:raw.index(b"\r\n--outer--")].replace(
        b"\r\n--outer\r\n" + EXE, b"")
    assert copy.endswith(b"\r\n--outer--\r\nEpilogue.\r\n")
    parsed = parse(copy)
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "application/pdf",
                                                     "text/plain"]
    assert parts[1].get_payload(decode=True) == parse(raw).get_payload()[2].get_payload(
        decode=True)
    note = parts[2].get_content()
    assert note.startswith(f"1 attachment matching *.exe removed by a filter rule of {TEAM}:")
    assert "- setup.exe (application/x-msdownload," in note


def test_strip_finds_nested_parts_but_never_cuts_inside_a_signed_part() -> None:
    inner = (b"Content-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n--inner\r\n"
             + TEXT + b"\r\n--inner\r\n" + EXE + b"\r\n--inner--")
    copy = rendered(mixed(inner, SIGNED), rule(STRIP))
    parsed = parse(copy)
    alternative, _, note = parsed.iter_parts()
    assert [p.get_content_type() for p in alternative.iter_parts()] == ["text/plain"]
    assert SIGNED in copy  # byte for byte, its .exe included
    assert "1 attachment matching" in note.get_content()
    signed_only = mixed(TEXT, SIGNED)  # a match inside it alone: nothing to cut, no note
    assert rendered(signed_only, rule(STRIP)).endswith(signed_only)


def test_strip_leaves_a_copy_with_nothing_to_remove_as_it_was() -> None:
    raw = mixed(TEXT, PDF)
    assert rendered(raw, rule(STRIP)).endswith(raw)  # after the trace fields
    plain = b"From: a@x.test\r\nSubject: hi\r\n\r\nno parts\r\n"
    assert rendered(plain, rule(STRIP)).endswith(plain)
    unclosed = HEAD + b"\r\n--outer\r\n" + EXE + b"\r\n"
    assert rendered(unclosed, rule(STRIP)).endswith(unclosed)


def test_strip_keeps_the_line_endings_of_the_message() -> None:
    raw = mixed(TEXT, EXE).replace(b"\r\n", b"\n")
    copy = rendered(raw, rule(STRIP))
    assert b"\r" not in copy and b"setup.exe" not in copy.split(b"removed by")[0]
    assert [p.get_content_type() for p in parse(copy).iter_parts()] == ["text/plain",
                                                                        "text/plain"]


def test_tag_adds_its_field_in_place_of_the_senders_own() -> None:
    raw = (b"From: a@x.test\r\nX-Filtered: forged\r\nSubject: hi\r\n\r\nbody\r\n")
    copy = rendered(raw, rule(TAG, "(?i)hi", H, header="subject", text="X-Filtered: yes"))
    assert parse(copy).get_all("X-Filtered") == ["yes"]
    assert copy.endswith(b"Subject: hi\r\n\r\nbody\r\n")
    encoded = rendered(raw, rule(TAG, "x", H, header="subject", text="X-Note: café"))
    assert b"X-Note: =?utf-8?" in encoded and encoded.isascii()
    assert str(parse(encoded)["X-Note"]) == "café"


def test_the_accept_step_lets_tag_and_strip_matches_through() -> None:
    class Rules:
        async def rules_for(self, targets: object) -> dict[str, list[FilterRule]]:
            return {TEAM: [rule(TAG, "x", H, header="subject", text="X-A: b"),
                           rule(REJECT, "files", H, header="subject")]}

    raw = mixed(TEXT, EXE)
    ctx = MessageContext.of(Envelope("ann@x.test", (TEAM,)), raw)
    step = MessageFilters(Rules(), 1.0)
    [refused] = asyncio.run(step(ctx, list(ctx.recipients.values()))).values()
    assert refused.error is not None  # no "x" in the Subject: the reject decides…
    tagged = raw.replace(b"Subject: files", b"Subject: x files")
    ctx = MessageContext.of(Envelope("ann@x.test", (TEAM,)), tagged)
    assert asyncio.run(step(ctx, list(ctx.recipients.values()))) == {}  # …and the tag won


@pytest.mark.parametrize(("field", "words"), [
    ("X-Filtered yes", "invalid field"),
    ("X Filtered: yes", "invalid field"),
    ("From: boss@example.test", "cannot add From"),
    ("content-type: text/html", "cannot add content-type"),
    ("X-MailFlow-Tag: x", "cannot add X-MailFlow-Tag"),
    ("X-Filtered:", "empty value"),
    ("X-Filtered: yes\r\nBcc: victim@x.test", r"U\+000D"),
])
def test_a_bad_tag_field_is_refused_with_the_reason(field: str, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        validated_tag_field(field)


def test_tag_and_strip_rules_are_checked_and_stored(repo: Repository) -> None:
    make_list(repo, TEAM)
    directory = DirectoryService(repo)
    with pytest.raises(InvalidInput, match="--add-header"):
        directory.add_filter_rule(TEAM, "tag", body="x")
    with pytest.raises(InvalidInput, match="tag only"):
        directory.add_filter_rule(TEAM, "reject", body="x", add_header="X-A: b")
    with pytest.raises(InvalidInput, match="give --attachment GLOB"):
        directory.add_filter_rule(TEAM, "strip", body="x")
    tag = directory.add_filter_rule(TEAM, "tag", body="x", add_header="  X-Spam:  maybe ")
    strip = directory.add_filter_rule(TEAM, "strip", attachment="*.EXE")
    assert [(r.action, r.text, r.argument) for r in directory.filter_rules(TEAM)] == [
        (TAG, "X-Spam: maybe", "x"), (STRIP, "", "*.exe")]
    assert (tag.action, strip.action) == (TAG, STRIP)
