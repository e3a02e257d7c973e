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

import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from mailflow import addresses, headers
from mailflow.clock import Clock, SystemClock
from mailflow.errors import InvalidInput
from mailflow.model import (
    Domain,
    ForwardStyle,
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


def validated_forward_style(style: str | ForwardStyle) -> ForwardStyle:
    try:
        return ForwardStyle(style)
    except ValueError:
        choices = " or ".join(s.value for s in ForwardStyle)
        raise InvalidInput(f"invalid forward style {style!r}: it must be {choices}") from None


def validated_targets(list_address: str, members: Iterable[str]) -> list[str]:
    """Members (canonical) of ``list_address``, none of them the list itself.

    A list or alias that sends to its own address (or to it with a plus tag, which
    reaches it too) would send each copy back to itself: refused here rather than
    ended by the loop marker one round later.
    """
    targets = validated_addresses(members)
    for target in targets:
        if addresses.untagged(target)[0] == list_address or target == list_address:
            raise InvalidInput(f"{list_address} cannot be its own member or target: "
                               "its mail would come back to it")
    return targets


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
                    name: str | None = None, priority: int | None = None,
                    forward_style: str | ForwardStyle | None = None) -> MailingList:
        """Change the settings given (``None``: leave as is); returns the list as stored.

        ``fwd`` is for aliases only: a list's copies carry its List-* fields on the
        original message, and a list stays ``resend`` (refused, or when made an alias
        later, it may be set then).
        """
        address = validated_address(address)
        new_kind = None if kind is None else validated_kind(kind)
        style = None if forward_style is None else validated_forward_style(forward_style)
        if style is ForwardStyle.FWD or new_kind is ListKind.LIST:
            current = self.repo.get_list(address)
            resulting_kind = new_kind or current.kind
            resulting_style = style or current.forward_style
            if resulting_kind is ListKind.LIST and resulting_style is ForwardStyle.FWD:
                raise InvalidInput(f"{address} is a list: the forward style fwd is for "
                                   "aliases (set --forward-style resend first, or make it "
                                   "an alias)")
        return self.repo.update_list(
            address, kind=new_kind,
            name=None if name is None else validated_list_name(name),
            priority=None if priority is None else validated_priority(priority),
            forward_style=style)

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
        address = validated_address(list_address)
        return self.repo.add_members(address, validated_targets(address, members),
                                     self.clock.now())

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

    def sender_rules(self, action: str | RuleAction | None = None,
                     target: str | None = None) -> list[SenderRule]:
        """The entries (of one action, for one target, if given), widest scope first."""
        return self.repo.sender_rules(
            None if action is None else validated_action(action),
            None if target is None else validated_rule_target(target))
