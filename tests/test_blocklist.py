"""Sender block and allow entries: the patterns a user may give, and the store on SQLite
and PostgreSQL (its LIKE must agree with the shell's rules, :func:`fnmatch.fnmatchcase`).
"""

from __future__ import annotations

import fnmatch

import pytest
from sqlalchemy import event

from mailflow.errors import Conflict, InvalidInput, NotFound
from mailflow.model import RuleAction, SenderRule
from mailflow.services.directory import DirectoryService, validated_pattern
from mailflow.store import Repository
from mailflow.testing.clock import FakeClock

BLOCK, ALLOW = RuleAction.BLOCK, RuleAction.ALLOW


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
