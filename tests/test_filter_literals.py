"""A filter pattern's required text: what it is read as, and that a search it skips
could never have matched (checked against the ``regex`` module on random patterns)."""

from __future__ import annotations

import random

import pytest
import regex

from mailflow import headers
from mailflow.model import FilterAction, FilterCondition, FilterRule
from mailflow.pipeline.accept.filters import Budget, ParsedMessage, holds
from mailflow.pipeline.accept.literals import RequiredText, required_text

TEAM = "team@example.test"


@pytest.mark.parametrize(("pattern", "expected"), [
    (r"(?i)cheap\s+pills", RequiredText("cheap", folded=True)),
    (r"wire transfer", RequiredText("wire transfer", folded=False)),
    (r"(?i)\bViagra\b", RequiredText("viagra", folded=True)),
    (r"@spam\.example$", RequiredText("@spam.example", folded=False)),
    (r"(?i)from\s+bad\.host", RequiredText("bad.host", folded=True)),
    (r"colou?r", RequiredText("colo", folded=False)),       # an optional letter ends it
    (r"zz ab*c", RequiredText("zz a", folded=False)),
    (r"ab+", RequiredText("ab", folded=False)),              # one b at least
    (r"x.y\d+long", RequiredText("long", folded=False)),
    (r"(?ms)^Subject: hi", RequiredText("Subject: hi", folded=False)),
    (r"straße", RequiredText("straße", folded=False)),
    (r"(?i)straße", RequiredText("stra", folded=True)),      # ß folds to "ss"
    (r"a+?b", RequiredText("a", folded=False)),              # lazy: still one a
])
def test_a_pattern_is_read_as_the_text_every_match_contains(
        pattern: str, expected: RequiredText) -> None:
    assert required_text(pattern) == expected


@pytest.mark.parametrize("pattern", [
    r"^[5-9]", r"a*b|!", r"(a+)+$", r"x{2,}", r"\p{L}+", r"(?x)cheap pills", r"\x41BC",
    r"\1", r".*", r"(?i:abc)", r"abc(?=d)", r"cheap(?:\s+pills){e<=1}", r"\s+", r"*a",
    r"^?", r"(?V1)abc", r"a\nb",
])
def test_syntax_not_followed_gives_no_required_text(pattern: str) -> None:
    """Groups, sets, alternation, counted repeats, other escapes, verbose mode: the
    pattern is always searched."""
    assert required_text(pattern) is None


def test_folded_text_is_compared_in_any_case_but_only_when_ascii() -> None:
    required = required_text(r"(?i)kelvin")
    assert required is not None
    assert required.missing_from("no such word here")
    assert not required.missing_from("KeLvIn")
    # The Kelvin sign folds to k: only the search can tell.
    assert not required.missing_from("\u212aelvin")
    assert regex.search(r"(?i)kelvin", "\u212aelvin") is not None


def test_a_skipped_search_is_one_that_could_not_match() -> None:
    """6,000 random patterns of literals (with letters that fold to others), escapes,
    anchors, repeats and some syntax not followed, against random texts: wherever the
    required text says a text cannot match, the ``regex`` module agrees."""
    rnd = random.Random(3834)
    letters = ["a", "b", "k", "K", "s", "S", "é", "ß", " ", "@", "-"]
    tokens = [*letters, r"\.", r"\-", r"\s", r"\S", r"\d", r"\w", r"\W", r"\b", ".", "^",
              "$", "(", "|", "[ab]"]
    repeats = ["", "", "", "*", "+", "?", "+?", "*?"]
    text_chars = [*letters, ".", "1", "\n", "\u212a", "\u017f", "SS", "ss", "A", "B"]
    skipped = searched = 0
    for _ in range(6_000):
        pattern = ("(?i)" if rnd.random() < 0.5 else "") + "".join(
            rnd.choice(tokens) + rnd.choice(repeats) for _ in range(rnd.randint(1, 6)))
        try:
            compiled = regex.compile(pattern)
        except regex.error:
            continue
        required = required_text(pattern)
        for _ in range(3):
            text = "".join(rnd.choice(text_chars) for _ in range(rnd.randint(0, 12)))
            if required is not None and required.missing_from(text):
                assert compiled.search(text) is None, (pattern, text)
                skipped += 1
            else:
                searched += 1
    assert skipped > 1_500 and searched > 1_500  # both ways taken, often


def test_a_rule_whose_text_is_missing_is_not_searched_and_spends_no_budget() -> None:
    """A required text in front of a slow pattern spares the search outright on a text
    without it; with it, the search runs (here on a spent budget: no match, logged)."""
    rule = FilterRule(TEAM, FilterCondition.BODY, r"needle\s*a*a*a*a*a*a*$",
                      FilterAction.REJECT)
    without = message("a" * 50_000 + "!")
    budget = Budget(0.0)  # a search would run out at once
    assert holds(rule, without, budget) is False
    assert not budget.exhausted
    assert holds(rule, message("needle aaaa"), budget) is False
    assert budget.exhausted
    assert holds(rule, message("the needle aaaa"), Budget(5.0)) is True


@pytest.mark.parametrize(("field", "pattern"), [
    ("Subject: =?utf-8?b?Q2hlYXAgVmlhZ3Jh?=", r"(?i)\bviagra\b"),  # an encoded word
    ("Subject: cheap\r\n   pills today", r"cheap pills"),           # folded, unfolded
    ("Subject: cheap \t pills today", r"cheap pills"),               # runs of space
    ("Subject: Stra\xc3\x9fe", r"Straße"),                           # 8-bit UTF-8
    ("SUBJECT: VIAGRA", r"(?i)viagra"),
    ("X-Spam-Score: 7.5", r"^[5-9]"),                                # no required text
])
def test_a_header_rule_still_matches_what_the_section_does_not_hold_as_such(
        field: str, pattern: str) -> None:
    """The header section as a whole answers for every field only where a field's value
    is its own text: encoded words, unfolding and 8-bit text are searched as before."""
    raw = f"From: a@x.test\r\n{field}\r\n\r\nbody\r\n".encode("latin-1")
    name = field.split(":")[0]
    rule = FilterRule(TEAM, FilterCondition.HEADER, pattern, FilterAction.REJECT,
                      header=name.lower())
    assert holds(rule, ParsedMessage(raw, raw[:headers.header_length(raw)]), Budget(5.0))
    missing = FilterRule(TEAM, FilterCondition.HEADER, "nowhere", FilterAction.REJECT,
                         header=name.lower())
    assert not holds(missing, ParsedMessage(raw, raw[:headers.header_length(raw)]),
                     Budget(5.0))


def message(body: str) -> ParsedMessage:
    raw = f"From: a@x.test\r\nSubject: x\r\n\r\n{body}".encode()
    return ParsedMessage(raw, raw[:headers.header_length(raw)])
