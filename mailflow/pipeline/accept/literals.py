"""The text a filter rule's regular expression cannot match without.

Most filter patterns are a keyword or a phrase with a little syntax around it
(``(?i)cheap\\s+pills``, ``@spam\\.example$``), and most mail contains none of them.
A search with a time bound costs the ``regex`` module two reads of the process's CPU
clock (system calls, dearer the more threads the relay runs), more than the search of a
short header value itself; a substring test costs neither.  So, as RE2 and Hyperscan
do with their literal prefilters, a pattern's longest run of text every match must
contain is looked for first, and a text without it is not searched at all.

Reading a pattern is deliberately narrow: a leading ``(?i)``, ``(?m)`` or ``(?s)``;
literal characters, escaped punctuation, ``.``, the class escapes ``\\s \\S \\d \\D \\w
\\W``, the anchors ``^ $ \\b \\B \\A \\Z``, and ``* + ?`` after any of those.  Anything
else (a group, a set, an alternation, a counted repeat, any other escape, verbose mode)
gives no required text, and such a pattern is always searched: a skipped search is
only ever one that could not have matched.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

_FLAGS: Final = re.compile(r"\(\?([ims]+)\)")
_CLASS_ESCAPES: Final = frozenset("sSdDwW")
_ANCHOR_ESCAPES: Final = frozenset("bBAZ")
_ANCHORS: Final = frozenset("^$")
_REPEATS: Final = frozenset("*+?")
_UNREAD: Final = frozenset("()[]{}|")  # syntax this reading does not follow
_PATTERNS: Final = 256  # distinct patterns remembered (as the compiled ones are)


@dataclass(frozen=True, slots=True)
class RequiredText:
    """Text every match of a pattern contains; ``folded``: in any case (``(?i)``)."""

    text: str
    folded: bool
    # Whether it holds white space (which unfolding a field changes): asked per message.
    spaced: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "spaced", any(char.isspace() for char in self.text))

    def missing_from(self, text: str, lower: Callable[[str], str] = str.lower) -> bool:
        """Whether ``text`` cannot hold a match.  Case-insensitively only for ASCII
        text: elsewhere case folding pairs ASCII letters with others (K and the Kelvin
        sign), which a lowered copy would miss.  ``lower``: ``str.lower``, or one that
        remembers the texts it lowered."""
        if not self.folded:
            return self.text not in text
        return text.isascii() and self.text not in lower(text)


@functools.lru_cache(maxsize=_PATTERNS)
def required_text(pattern: str) -> RequiredText | None:
    """The longest run of literal text every match of ``pattern`` contains; None where
    the pattern has none, or uses syntax this reading does not follow."""
    flags = _FLAGS.match(pattern)
    folded = flags is not None and "i" in flags.group(1)
    position = flags.end() if flags is not None else 0
    runs: list[str] = []
    run: list[str] = []
    literal = False  # whether the last thing read was a literal character (in ``run``)
    read_one = False  # whether anything was read that a repeat may follow
    while position < len(pattern):
        char = pattern[position]
        position += 1
        if char in _REPEATS:
            if not read_one:
                return None  # a repeat of nothing (or of an anchor): not followed
            if literal and char != "+":  # optional: not required after all
                run.pop()
            if position < len(pattern) and pattern[position] in "?+":
                position += 1  # lazy or possessive: the same text is required
            runs.append("".join(run))
            run, literal, read_one = [], False, False
            continue
        if char in _UNREAD:
            return None
        if char == "\\":
            if position == len(pattern):
                return None
            char = pattern[position]
            position += 1
            if char in _CLASS_ESCAPES or char in _ANCHOR_ESCAPES:
                runs.append("".join(run))
                run, literal, read_one = [], False, char in _CLASS_ESCAPES
                continue
            if not char.isascii() or char.isalnum() or char == "_" or not char.isprintable():
                return None  # \n, \x41, \1, \p{...}: other meanings
        elif char == "." or char in _ANCHORS:
            runs.append("".join(run))
            run, literal, read_one = [], False, char == "."
            continue
        if folded and not char.isascii():
            runs.append("".join(run))  # folds to other letters: not looked for
            run, literal, read_one = [], False, True
            continue
        run.append(char.lower() if folded else char)
        literal = read_one = True
    runs.append("".join(run))
    longest = max(runs, key=len)
    return RequiredText(longest, folded) if longest else None
