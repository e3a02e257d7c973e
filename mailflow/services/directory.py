"""The directory: domains, lists and aliases, members, and every rule their values obey.

The CLI calls it today and the REST API next.  Both hand it what a user typed and get
domain objects back, or a domain error (:class:`~mailflow.errors.InvalidInput`,
:class:`~mailflow.errors.NotFound`, :class:`~mailflow.errors.Conflict`) whose wording is
theirs to extend.  Validation lives here, not in an adapter, so a value refused on one
path is refused on every path: a list's display name goes into the ``List-Id`` field of
every copy, so a CR or LF in it would let whoever sets it add header fields to mail.

The repository below stores what it is given; it keeps only the rules the data needs
to stay consistent (a domain must exist, an address is unique).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import Final

import regex

from mailflow import addresses, headers
from mailflow.clock import Clock, SystemClock
from mailflow.errors import InvalidInput
from mailflow.model import (
    Domain,
    FilterAction,
    FilterCondition,
    FilterRule,
    HeldMessage,
    ListKind,
    MailingList,
    Member,
    RuleAction,
    SenderRule,
)
from mailflow.store import Repository

NAME_MAX_LENGTH: Final = 200          # characters; the ``lists.name`` column
PRIORITY_MIN: Final = -1000
PRIORITY_MAX: Final = 1000
# Unicode categories refused in names: those that must never reach a header field.
_REFUSED_CATEGORIES: Final = headers.UNSAFE_CATEGORIES
PATTERN_MAX_LENGTH: Final = 320       # characters; the ``sender_rules.pattern`` column
# Not in a sender pattern: the address brackets, the LIKE escape, and ``[``/``]``, which
# would read as a shell character class (only ``*`` and ``?`` are wildcards here).
_PATTERN_REFUSED: Final = frozenset("<>\\[]")


FILTER_PATTERN_MAX_LENGTH: Final = 1000  # characters of a filter's regular expression
FILTER_TEXT_MAX_LENGTH: Final = 500      # the ``filter_rules.text`` column
FILTER_HEADER_MAX_LENGTH: Final = 200    # the ``filter_rules.header`` column
FILTER_RULES_PER_ADDRESS: Final = 100    # every message to the address tries them all
# RFC 5322 field names: printable US-ASCII but the colon.
_FIELD_NAME: Final = re.compile(r"[!-9;-~]+")


def validated_address(text: str) -> str:
    """An address a user typed, validated and in canonical (lower-case) form."""
    return addresses.validated(text)


def validated_addresses(values: Iterable[str]) -> list[str]:
    """Every address of ``values`` validated (the first invalid one raises)."""
    return [addresses.validated(v) for v in values]


def validated_domain(text: str) -> str:
    """A domain name a user typed, validated and in canonical form (A-labels)."""
    return addresses.validated_domain(text)


def validated_list_address(text: str) -> str:
    """The address of a new list or alias: valid, and not a list's bounce address."""
    address = addresses.validated(text)
    local, _ = addresses.split(address)
    if local.endswith(addresses.BOUNCES_SUFFIX):
        raise InvalidInput(f"addresses ending in {addresses.BOUNCES_SUFFIX} are reserved "
                           "for the bounces of lists")
    return address


def validated_list_name(name: str) -> str:
    """A display name that is safe in a header: no line breaks or other controls."""
    for char in name:
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise InvalidInput(
                f"invalid list name {name!r}: it contains the control character "
                f"U+{ord(char):04X}; line breaks (CR, LF), NUL and other control "
                "characters are not allowed in a name")
    if len(name) > NAME_MAX_LENGTH:
        raise InvalidInput(f"list name too long ({len(name)} characters, at most "
                           f"{NAME_MAX_LENGTH})")
    return name


def validated_priority(priority: int) -> int:
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise InvalidInput(f"invalid priority {priority}: it must be between {PRIORITY_MIN} "
                           f"and {PRIORITY_MAX}")
    return priority


def validated_pattern(text: str) -> str:
    """A sender pattern a user typed, in lower case (patterns match case-insensitively).

    Shell-style: ``*`` is any run of characters (``@`` and dots included), ``?`` one
    character, anything else itself.  A pattern without ``@`` must have a ``*`` (``*``
    alone is every sender); otherwise it could never match an address.
    """
    pattern = text.strip().lower()
    if not pattern:
        raise InvalidInput("empty sender pattern: give an address or a pattern such as "
                           "*@spam.example")
    for char in pattern:
        if char.isspace() or unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise InvalidInput(f"invalid sender pattern {text!r}: it contains the character "
                               f"U+{ord(char):04X}; spaces and control characters are not "
                               "allowed")
        if char in _PATTERN_REFUSED:
            raise InvalidInput(f"invalid sender pattern {text!r}: {char!r} is not allowed "
                               "(the wildcards are * and ?, without [...] classes or "
                               "<> brackets)")
    if len(pattern) > PATTERN_MAX_LENGTH:
        raise InvalidInput(f"sender pattern too long ({len(pattern)} characters, at most "
                           f"{PATTERN_MAX_LENGTH})")
    ats = pattern.count("@")
    if ats > 1:
        raise InvalidInput(f"invalid sender pattern {text!r}: more than one @")
    if not ats and "*" not in pattern:
        raise InvalidInput(f"invalid sender pattern {text!r}: it matches no address; "
                           f"for a whole domain write *@{pattern}")
    return pattern


def validated_rule_target(text: str | None) -> str:
    """Whom an entry covers: '' (every recipient), a domain, or one list or alias address,
    in canonical form."""
    if text is None or not text.strip():
        return ""
    return validated_address(text) if "@" in text else validated_domain(text)


def validated_kind(kind: str | ListKind) -> ListKind:
    try:
        return ListKind(kind)
    except ValueError:
        choices = " or ".join(k.value for k in ListKind)
        raise InvalidInput(f"invalid kind {kind!r}: it must be {choices}") from None


def validated_action(action: str | RuleAction) -> RuleAction:
    try:
        return RuleAction(action)
    except ValueError:
        choices = " or ".join(a.value for a in RuleAction)
        raise InvalidInput(f"invalid action {action!r}: it must be {choices}") from None


def _header_safe_text(text: str, what: str, limit: int) -> str:
    """Text that may go into a reply or a header: no line breaks or other controls."""
    for char in text:
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise InvalidInput(f"invalid {what} {text!r}: it contains the control character "
                               f"U+{ord(char):04X}; line breaks (CR, LF) and other control "
                               "characters are not allowed")
    if len(text) > limit:
        raise InvalidInput(f"{what} too long ({len(text)} characters, at most {limit})")
    return text


def validated_filter_pattern(pattern: str) -> str:
    """A regular expression (the ``regex`` module's syntax) that compiles."""
    if not pattern:
        raise InvalidInput("empty regular expression")
    _header_safe_text(pattern, "regular expression", FILTER_PATTERN_MAX_LENGTH)
    try:
        regex.compile(pattern)
    except (regex.error, OverflowError, RecursionError) as exc:
        raise InvalidInput(f"invalid regular expression {pattern!r}: {exc}") from None
    return pattern


def validated_filter_condition(*, header: str | None = None, matches: str | None = None,
                               body: str | None = None, larger_than: int | None = None,
                               attachment: str | None = None, not_encrypted: bool = False
                               ) -> tuple[FilterCondition, str, str]:
    """Exactly one condition: (condition, header name, argument)."""
    given = [name for name, value in (("--header", header), ("--body", body),
                                      ("--larger-than", larger_than),
                                      ("--attachment", attachment)) if value is not None]
    if not_encrypted:
        given.append("--not-encrypted")
    if len(given) != 1:
        raise InvalidInput("give exactly one condition: --header NAME --matches REGEX, "
                           "--body REGEX, --larger-than BYTES, --attachment GLOB or "
                           f"--not-encrypted (got {', '.join(given) or 'none'}); for "
                           "several, add several rules")
    if (matches is not None) != (header is not None):
        raise InvalidInput("--header and --matches go together")
    if header is not None and matches is not None:
        name = header.strip().rstrip(":").strip()
        if not _FIELD_NAME.fullmatch(name) or len(name) > FILTER_HEADER_MAX_LENGTH:
            raise InvalidInput(f"invalid header name {header!r}: printable ASCII without "
                               f"spaces or a colon, at most {FILTER_HEADER_MAX_LENGTH} "
                               "characters")
        return FilterCondition.HEADER, name.lower(), validated_filter_pattern(matches)
    if body is not None:
        return FilterCondition.BODY, "", validated_filter_pattern(body)
    if larger_than is not None:
        if larger_than < 0:
            raise InvalidInput(f"invalid size {larger_than}: a number of bytes, 0 or more")
        return FilterCondition.LARGER_THAN, "", str(larger_than)
    if attachment is not None:
        glob = attachment.strip()
        if not glob:
            raise InvalidInput("empty attachment pattern: give a MIME type or file name "
                               "glob such as application/x-msdownload or *.exe")
        return FilterCondition.ATTACHMENT, "", _header_safe_text(
            glob.lower(), "attachment pattern", PATTERN_MAX_LENGTH)
    return FilterCondition.NOT_ENCRYPTED, "", ""


def validated_filter_action(action: str | FilterAction) -> FilterAction:
    try:
        return FilterAction(action)
    except ValueError:
        choices = ", ".join(a.value for a in FilterAction)
        raise InvalidInput(f"invalid action {action!r}: it must be one of {choices}") from None


class DirectoryService:
    """Domains, lists and aliases, their members, and sender entries: validated, then stored.

    ``on_rules_changed`` is called after every change that adds or removes sender
    entries, so a cache of them in the same process (the accept service's
    :class:`~mailflow.services.sender_rules.SenderRuleBook`) forgets at once; other
    processes' caches expire within their TTL.
    """

    def __init__(self, repo: Repository, clock: Clock | None = None, *,
                 on_rules_changed: Callable[[], None] | None = None) -> None:
        self.repo = repo
        self.clock = clock or SystemClock()
        self.on_rules_changed = on_rules_changed

    def _rules_changed(self) -> None:
        if self.on_rules_changed is not None:
            self.on_rules_changed()

    # -- domains ------------------------------------------------------------------------

    def add_domain(self, name: str) -> Domain:
        return self.repo.add_domain(validated_domain(name), self.clock.now())

    def domains(self) -> list[Domain]:
        return self.repo.domains()

    def remove_domain(self, name: str) -> None:
        """Stop serving a domain (and drop its sender entries); :class:`Conflict` while
        it still has lists."""
        self.repo.remove_domain(validated_domain(name))
        self._rules_changed()

    # -- lists and aliases --------------------------------------------------------------

    def create_list(self, address: str, *, kind: str | ListKind = ListKind.LIST,
                    name: str = "", priority: int = 0) -> MailingList:
        return self.repo.create_list(validated_list_address(address), validated_kind(kind),
                                     validated_list_name(name), validated_priority(priority),
                                     self.clock.now())

    def update_list(self, address: str, *, kind: str | ListKind | None = None,
                    name: str | None = None, priority: int | None = None) -> MailingList:
        """Change the settings given (``None``: leave as is); returns the list as stored."""
        return self.repo.update_list(
            validated_address(address),
            kind=None if kind is None else validated_kind(kind),
            name=None if name is None else validated_list_name(name),
            priority=None if priority is None else validated_priority(priority))

    def get_list(self, address: str) -> MailingList:
        return self.repo.get_list(validated_address(address))

    def find_list(self, address: str) -> MailingList | None:
        return self.repo.find_list(validated_address(address))

    def lists(self) -> list[tuple[MailingList, int]]:
        """Every list and alias with its member count, by address."""
        return self.repo.lists_with_counts()

    def delete_list(self, address: str) -> int:
        """Delete a list, its roster and its sender entries; returns how many pending
        deliveries failed."""
        failed = self.repo.delete_list(validated_address(address), self.clock.now())
        self._rules_changed()
        return failed

    # -- members ------------------------------------------------------------------------

    def add_members(self, list_address: str, members: Sequence[str]) -> tuple[int, int]:
        """Add members (all valid, or none added); returns (added, already there)."""
        return self.repo.add_members(validated_address(list_address),
                                     validated_addresses(members), self.clock.now())

    def remove_members(self, list_address: str, members: Sequence[str]) -> int:
        """Remove members; returns how many were members."""
        return self.repo.remove_members(validated_address(list_address),
                                        validated_addresses(members))

    def members(self, list_address: str) -> list[Member]:
        return self.repo.members(validated_address(list_address))

    # -- sender entries (block and allow lists) -------------------------------------------

    def add_sender_rule(self, action: str | RuleAction, pattern: str,
                        target: str | None = None) -> SenderRule:
        """Block or allow senders matching ``pattern`` for ``target`` (None: every
        recipient; a served domain; or a list or alias address)."""
        rule = SenderRule(validated_action(action), validated_pattern(pattern),
                          validated_rule_target(target), self.clock.now())
        added = self.repo.add_sender_rule(rule)
        self._rules_changed()
        return added

    def remove_sender_rule(self, action: str | RuleAction, pattern: str,
                           target: str | None = None) -> None:
        self.repo.remove_sender_rule(validated_action(action), validated_pattern(pattern),
                                     validated_rule_target(target))
        self._rules_changed()

    # -- filter rules and held messages ---------------------------------------------------

    def add_filter_rule(self, address: str, action: str | FilterAction, *, text: str = "",
                        header: str | None = None, matches: str | None = None,
                        body: str | None = None, larger_than: int | None = None,
                        attachment: str | None = None, not_encrypted: bool = False
                        ) -> FilterRule:
        """Add a rule after the list's others (tried in that order; first match wins)."""
        target = validated_address(address)
        condition, name, argument = validated_filter_condition(
            header=header, matches=matches, body=body, larger_than=larger_than,
            attachment=attachment, not_encrypted=not_encrypted)
        rule = FilterRule(target, condition, argument, validated_filter_action(action), name,
                          _header_safe_text(text.strip(), "text", FILTER_TEXT_MAX_LENGTH),
                          created_at=self.clock.now())
        if len(self.repo.filter_rules(target)) >= FILTER_RULES_PER_ADDRESS:
            raise InvalidInput(f"{target} has {FILTER_RULES_PER_ADDRESS} filter rules "
                               "already, the most it may have")
        added = self.repo.add_filter_rule(rule)
        self._rules_changed()
        return added

    def filter_rules(self, address: str) -> list[FilterRule]:
        return self.repo.filter_rules(validated_address(address))

    def remove_filter_rule(self, address: str, number: int) -> FilterRule:
        removed = self.repo.remove_filter_rule(validated_address(address), number)
        self._rules_changed()
        return removed

    def held_messages(self) -> list[HeldMessage]:
        return self.repo.held_messages()

    def release_held(self, message_id: str) -> None:
        self.repo.release_held(message_id.strip(), self.clock.now())

    def discard_held(self, message_id: str) -> None:
        self.repo.discard_held(message_id.strip(), self.clock.now())

    def sender_rules(self, action: str | RuleAction | None = None,
                     target: str | None = None) -> list[SenderRule]:
        """The entries (of one action, for one target, if given), widest scope first."""
        return self.repo.sender_rules(
            None if action is None else validated_action(action),
            None if target is None else validated_rule_target(target))
