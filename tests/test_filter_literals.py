"""A filter pattern's required text: what it is read as, and that a search it skips
could never have matched (checked against the ``regex`` module on random patterns)."""

from __future__ import annotations

import random

import pytest
import regex

from mailflow.model import FilterAction, FilterCondition, FilterRule
from mailflow.pipeline.accept.filters import Budget
from mailflow.pipeline.accept.literals import RequiredText, required_text


@pytest.mark.parametrize(("pattern", "expected"), [
    (r"(?i)cheap\s+pills", RequiredText("cheap", folded=True)),
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
    """Random patterns of literals (with letters that fold to others), escapes, anchors,
    repeats and some syntax not followed, against random texts: wherever the required
    text says a text cannot match, the ``regex`` module agrees."""
    rnd = random.Random(3834)
    letters = ["a", "b", "k", "K", "s", "S", "é", "ß", " ", "@", "-"]
    tokens = [*letters, r"\.", r"\-", r"\s", r"\S", r"\d", r"\w", r"\W", r"\b", ".", "^",
              "$", "(", "|", "[ab]"]
    repeats = ["", "", "", "*", "+", "?", "+?", "*?"]
    text_chars = [*letters, ".", "1", "\n", "\u212a", "\u017f", "SS", "ss", "A", "B"]
    skipped = searched = 0
    for _ in range(20_000):
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
    assert skipped > 5_000 and searched > 5_000  # both ways taken, often


def test_a_rule_whose_text_is_missing_is_not_searched_and_spends_no_budget() -> None:
    """``(a|aa)*`` style patterns are what the budget is for; a required text in front
    of one spares the search outright on a text without it."""
    rule = FilterRule("team@example.test", FilterCondition.BODY, r"needle\s*a*a*a*a*a*a*$",
                      FilterAction.REJECT)
    text = "a" * 50_000 + "!"
    budget = Budget(0.0)  # a search would run out at once
    assert budget.search(rule.argument, text, rule) is False
    assert not budget.exhausted
    assert budget.search(rule.argument, "needle aaaa", rule) is False  # searched: no time
    assert budget.exhausted
    assert Budget(5.0).search(rule.argument, "the needle aaaa", rule) is True
