"""Filter rules that change a list's copies: which one applies, and ``tag``.

The accept step lets a message through for a list whose first matching rule is a
``tag`` or ``strip`` rule (:data:`~mailflow.model.COPY_ACTIONS`); the copies for that
list are changed when they are rendered, so the stored message stays as received.  The
list's rules are matched again then, first match wins as before (a ``reject`` tried
before a ``tag`` still decides first, so the tag applies only where it decided), on
the rules the list has when the copy is rendered: a message that waited in the queue
gets a rule changed meanwhile.  Matching parses and runs regular expressions, so it
runs on a thread, within ``filter_regex_timeout`` as at the accept step, once per
rendering variant.

``tag`` adds the rule's field (``Name: value``, validated by the directory when the
rule was added: no control characters, no field that routes, identifies or
structures the message) and drops any field of that name the message came with, so a
sender cannot set the tag the copy's readers filter on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from email.header import Header
from typing import Final

from mailflow import headers
from mailflow.model import COPY_ACTIONS, FilterAction, FilterRule
from mailflow.pipeline.accept import filters
from mailflow.pipeline.context import CopyContext

_FIELD_NAME: Final = re.compile(r"[!-9;-~]+")  # RFC 5322: printable US-ASCII but the colon


def copy_rules(rules: Sequence[FilterRule]) -> tuple[FilterRule, ...]:
    """The rules a list's copies depend on: all of them if one changes copies, else none."""
    if any(rule.action in COPY_ACTIONS for rule in rules):
        return tuple(rules)
    return ()


def applied_rule(raw: bytes, rules: Sequence[FilterRule], timeout: float
                 ) -> FilterRule | None:
    """The tag or strip rule the copies of ``raw`` get from one list's ``rules``.

    Blocking (parses, runs regular expressions): called on a thread.
    """
    if not rules:
        return None
    target = rules[0].target
    header = raw[:headers.header_length(raw)]
    matched = filters.first_matches(raw, header, {target: rules}, timeout).get(target)
    return matched if matched is not None and matched.action in COPY_ACTIONS else None


def filter_tag(copy: CopyContext) -> None:
    """The send step: the field of the copy's ``tag`` rule, replacing any of that name."""
    rule = copy.filter_rule
    if rule is None or rule.action is not FilterAction.TAG:
        return
    name, _, value = rule.text.partition(":")
    name, value = name.strip(), headers.header_safe(value.strip())
    if not value or not _FIELD_NAME.fullmatch(name):  # checked when added; and here again
        return
    copy.removed.append(name)
    if not value.isascii():  # RFC 2047: the added fields are written as UTF-8 otherwise
        value = Header(value, "utf-8", header_name=name).encode()
    copy.added.append(f"{name}: {value}")
