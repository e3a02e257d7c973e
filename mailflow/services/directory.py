"""The directory: domains, lists and aliases, members, and every rule their values obey.

The CLI and the REST API call it.  Both hand it what a user typed and get
domain objects back, or a domain error (:class:`~mailflow.errors.InvalidInput`,
:class:`~mailflow.errors.NotFound`, :class:`~mailflow.errors.Conflict`) whose wording is
theirs to extend.  Validation lives here, not in an adapter, so a value refused on one
path is refused on every path: a list's display name goes into the ``List-Id`` field of
every copy, so a CR or LF in it would let whoever sets it add header fields to mail.

The repository below stores what it is given; it keeps only the rules the data needs
to stay consistent (a domain must exist, an address is unique).
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from string import Template
from typing import Final, TypeVar

import regex

from mailflow import addresses, headers
from mailflow.clock import Clock, SystemClock
from mailflow.errors import InvalidInput
from mailflow.model import (
    AddedMembers,
    AutoReply,
    BounceEventRow,
    DkimKey,
    DmarcMode,
    Domain,
    FilterAction,
    FilterCondition,
    FilterRule,
    ForwardStyle,
    HeldMessage,
    ListKind,
    MailingList,
    Member,
    MemberRole,
    NonMemberAction,
    PostingPolicy,
    ReplyTo,
    RuleAction,
    SenderRule,
    Suppression,
)
from mailflow.pipeline.process.autoreply import TEMPLATE_KEYS
from mailflow.services import dkim_keys
from mailflow.services.member_csv import MemberImport, MemberRow, RowProblem
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
AUTOREPLY_SUBJECT_MAX: Final = 200    # characters of the subject template
AUTOREPLY_BODY_MAX: Final = 10_000    # characters of the body template
AUTOREPLY_DEFAULT_SUBJECT: Final = "Auto: $subject"
ONCE_PER_DAYS_MAX: Final = 365
MIN_BOUNCE_THRESHOLD: Final = 0.5     # one temporary bounce
MAX_BOUNCE_THRESHOLD: Final = 1000.0


SUBJECT_PREFIX_MAX_LENGTH: Final = 100  # the ``lists.subject_prefix`` column
TEMPLATE_MAX_LENGTH: Final = 4000       # characters of a header or footer template
URL_MAX_LENGTH: Final = 500             # the ``lists.archive_url`` column
FILTER_PATTERN_MAX_LENGTH: Final = 1000  # characters of a filter's regular expression
FILTER_TEXT_MAX_LENGTH: Final = 500      # the ``filter_rules.text`` column
FILTER_HEADER_MAX_LENGTH: Final = 200    # the ``filter_rules.header`` column
FILTER_RULES_PER_ADDRESS: Final = 100    # every message to the address tries them all
TAG_NAME_MAX_LENGTH: Final = 76         # a tag rule's field name (RFC 5322 line: 78)
TAG_VALUE_MAX_LENGTH: Final = 400       # its value; with the name, fits the text column
TAG_REFUSED_NAMES: Final = frozenset({
    "from", "sender", "reply-to", "to", "cc", "bcc", "date", "message-id", "in-reply-to",
    "references", "subject", "mime-version", "received", "return-path", "dkim-signature",
    "authentication-results", "precedence", "auto-submitted", "errors-to"})
TAG_REFUSED_PREFIXES: Final = ("content-", "resent-", "arc-", "list-", "x-mailflow-")
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
    return _validated_name(name, "list name")


def validated_member_name(name: str) -> str:
    """A member's display name, by the list names' rule: none goes into a header today,
    and one that may (a personalised ``To:``) must not be able to add a field."""
    return _validated_name(name, "member name")


def _validated_name(name: str, what: str) -> str:
    for char in name:
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise InvalidInput(
                f"invalid {what} {name!r}: it contains the control character "
                f"U+{ord(char):04X}; line breaks (CR, LF), NUL and other control "
                "characters are not allowed in a name")
    if len(name) > NAME_MAX_LENGTH:
        raise InvalidInput(f"{what} too long ({len(name)} characters, at most "
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


E = TypeVar("E", bound=enum.StrEnum)


def _validated_choice(kind: type[E], value: str | E, what: str) -> E:
    try:
        return kind(value)
    except ValueError:
        choices = " or ".join(member.value for member in kind)
        raise InvalidInput(f"invalid {what} {value!r}: it must be {choices}") from None


def validated_kind(kind: str | ListKind) -> ListKind:
    return _validated_choice(ListKind, kind, "kind")


def validated_action(action: str | RuleAction) -> RuleAction:
    return _validated_choice(RuleAction, action, "action")


def validated_template(text: str, what: str, limit: int, *, one_line: bool) -> str:
    """A reply template: only the documented ``$names``, within ``limit`` characters,
    and for a header (``one_line``) no line break or other control character."""
    if len(text) > limit:
        raise InvalidInput(f"{what} too long ({len(text)} characters, at most {limit})")
    for char in text:
        if char in "\n\t" and not one_line:
            continue
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise InvalidInput(f"invalid {what}: it contains the control character "
                               f"U+{ord(char):04X}" + ("; a subject is one line" if one_line
                                                       else ""))
    template = Template(text)
    unknown = [n for n in template.get_identifiers() if n not in TEMPLATE_KEYS]
    if unknown or not template.is_valid():
        known = ", ".join(f"${k}" for k in TEMPLATE_KEYS)
        problem = f"unknown name ${unknown[0]}" if unknown else "a stray $ (write $$ for $)"
        raise InvalidInput(f"invalid {what}: {problem}; the names are {known}")
    return text


def validated_date(text: str | None, what: str) -> float | None:
    """An ISO date (midnight UTC) or date and time (UTC unless it says) as epoch seconds."""
    if text is None or not text.strip():
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        try:
            day = date.fromisoformat(text.strip())
        except ValueError:
            raise InvalidInput(f"invalid {what} {text!r}: write a date as 2026-12-24 or "
                               "2026-12-24T09:00 (UTC unless an offset is given)") from None
        moment = datetime(day.year, day.month, day.day)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def validated_once_per_days(days: int) -> int:
    if not 1 <= days <= ONCE_PER_DAYS_MAX:
        raise InvalidInput(f"invalid interval {days} days: it must be between 1 and "
                           f"{ONCE_PER_DAYS_MAX} (RFC 3834 asks for about 7)")
    return days


def validated_bounce_threshold(threshold: float) -> float:
    if not MIN_BOUNCE_THRESHOLD <= threshold <= MAX_BOUNCE_THRESHOLD:
        raise InvalidInput(f"invalid bounce threshold {threshold:g}: from "
                           f"{MIN_BOUNCE_THRESHOLD:g} to {MAX_BOUNCE_THRESHOLD:g}")
    return threshold


def validated_suppression_target(text: str | None) -> str:
    """'' (every list) or a list's address."""
    return "" if not text else validated_address(text)


def validated_forward_style(style: str | ForwardStyle) -> ForwardStyle:
    return _validated_choice(ForwardStyle, style, "forward style")


def validated_dmarc_mode(mode: str | DmarcMode) -> DmarcMode:
    return _validated_choice(DmarcMode, mode, "DMARC mode")


def validated_decoration(*, subject_prefix: str | None = None, reply_to: str | None = None,
                         header_template: str | None = None,
                         footer_template: str | None = None,
                         archive_url: str | None = None) -> dict[str, str]:
    """The decoration fields given (``None``: unchanged; ``''``: cleared), validated:
    what goes into a header field has no controls, templates keep to the sandbox's
    subset (:func:`~mailflow.pipeline.send.templates.check`)."""
    changes: dict[str, str] = {}
    if subject_prefix is not None:
        changes["subject_prefix"] = _header_safe_text(
            subject_prefix.strip(), "subject prefix", SUBJECT_PREFIX_MAX_LENGTH)
    if reply_to is not None:
        choice = reply_to.strip()
        if not choice or choice.lower() in (ReplyTo.NONE.value, ReplyTo.LIST.value):
            changes["reply_to"] = choice.lower() or ReplyTo.NONE.value
        else:
            try:
                changes["reply_to"] = validated_address(choice)
            except InvalidInput as exc:
                raise InvalidInput(f"invalid Reply-To policy {reply_to!r}: none, list or an "
                                   f"address ({exc})") from None
    for key, source in (("header_template", header_template),
                        ("footer_template", footer_template)):
        if source is not None:
            changes[key] = _validated_template(source, key.replace("_", " "))
    if archive_url is not None:
        changes["archive_url"] = _validated_url(archive_url.strip(), "archive URL")
    return changes


def _validated_template(source: str, what: str) -> str:
    if len(source) > TEMPLATE_MAX_LENGTH:
        raise InvalidInput(f"{what} too long ({len(source)} characters, at most "
                           f"{TEMPLATE_MAX_LENGTH})")
    from mailflow.pipeline.send import templates  # Jinja2: only for a template

    try:
        templates.check(source)
    except templates.UnsafeTemplate as exc:
        raise InvalidInput(f"{what} refused: {exc}") from None
    return source


def _validated_url(url: str, what: str) -> str:
    """An http(s) or mailto URL that may go between ``<`` and ``>`` in a header field."""
    if not url:
        return url
    _header_safe_text(url, what, URL_MAX_LENGTH)
    scheme = url.partition(":")[0].lower()
    if scheme not in ("http", "https", "mailto") or any(c.isspace() or c in '<>"'
                                                        for c in url):
        raise InvalidInput(f"invalid {what} {url!r}: an http(s) or mailto URL without "
                           "spaces, quotes or angle brackets")
    return url


HOLD_DAYS_MAX: Final = 365


def validated_role(role: str | MemberRole) -> MemberRole:
    return _validated_choice(MemberRole, role, "role")


def validated_posting(policy: str | PostingPolicy) -> PostingPolicy:
    return _validated_choice(PostingPolicy, policy, "posting policy")


def validated_non_member_action(action: str | NonMemberAction) -> NonMemberAction:
    return _validated_choice(NonMemberAction, action, "non-member action")


def validated_hold_days(days: int) -> int:
    if not 1 <= days <= HOLD_DAYS_MAX:
        raise InvalidInput(f"invalid hold time {days} days: it must be between 1 and "
                           f"{HOLD_DAYS_MAX}")
    return days




def validated_targets(list_address: str, members: Iterable[str]) -> list[str]:
    """Members (canonical) of ``list_address``, none of them the list itself.

    A list or alias that sends to its own address (or to it with a plus tag, which
    reaches it too) would send each copy back to itself: refused here rather than
    ended by the loop marker one round later.
    """
    targets = validated_addresses(members)
    for target in targets:
        _refuse_itself(list_address, target)
    return targets


def _refuse_itself(list_address: str, target: str) -> None:
    """``target`` (canonical) must not be the list itself (see :func:`validated_targets`)."""
    if addresses.untagged(target)[0] == list_address or target == list_address:
        raise InvalidInput(f"{list_address} cannot be its own member or target: "
                           "its mail would come back to it")


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
    return _validated_choice(FilterAction, action, "action")


def validated_tag_field(field: str) -> str:
    """The ``Name: value`` field a ``tag`` rule adds, as it is stored and written.

    Fields that route, identify, authenticate or structure a message are refused: a
    second ``From`` or ``Content-Type`` would make the copy ambiguous to its reader,
    and the relay's own fields (``X-MailFlow-*``, ``List-*``) are its word alone.
    """
    name, colon, value = field.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not _FIELD_NAME.fullmatch(name) or len(name) > TAG_NAME_MAX_LENGTH:
        raise InvalidInput(f"invalid field {field!r}: give 'Name: value', the name printable "
                           f"ASCII without spaces or a colon, at most {TAG_NAME_MAX_LENGTH} "
                           "characters")
    lowered = name.lower()
    if lowered in TAG_REFUSED_NAMES or lowered.startswith(TAG_REFUSED_PREFIXES):
        raise InvalidInput(f"a tag rule cannot add {name}: it routes, identifies, "
                           "authenticates or structures the message; choose another name, "
                           "such as X-Filtered")
    if not value:
        raise InvalidInput(f"empty value for {name}: give 'Name: value'")
    _header_safe_text(value, "field value", TAG_VALUE_MAX_LENGTH)
    return f"{name}: {value}"


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

    # -- bounces and suppressions -------------------------------------------------------

    def enable_members(self, list_address: str, members: Sequence[str]) -> int:
        """Active again, bounce score 0; returns how many were disabled or unsubscribed."""
        return self.repo.enable_members(validated_address(list_address),
                                        validated_addresses(members))

    def bounce_events(self, list_address: str | None = None) -> list[BounceEventRow]:
        return self.repo.bounce_events(None if list_address is None
                                       else validated_address(list_address))

    def suppress(self, address: str, list_address: str | None = None,
                 reason: str = "") -> bool:
        """Suppress ``address`` for every list or one; whether it was new."""
        return self.repo.add_suppression(Suppression(
            validated_address(address), validated_suppression_target(list_address),
            _header_safe_text(reason, "reason", 200) if reason else "", self.clock.now()))

    def unsuppress(self, address: str, list_address: str | None = None) -> None:
        self.repo.remove_suppression(validated_address(address),
                                     validated_suppression_target(list_address))

    def suppressions_page(self, list_address: str | None, limit: int,
                          after: tuple[str, str] | None = None) -> list[Suppression]:
        """One page by (address, list) (``after``: the last of the page before); every
        entry, or (``list_address`` '') the global ones, or one list's."""
        return self.repo.suppressions_page(
            None if list_address is None else validated_suppression_target(list_address),
            limit, after)

    def suppressions(self, list_address: str | None = None) -> list[Suppression]:
        return self.repo.suppressions(None if list_address is None
                                      else validated_suppression_target(list_address))

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

    # -- DKIM keys ------------------------------------------------------------------------

    def create_dkim_key(self, domain: str, selector: str | None = None, *,
                        replace: bool = False) -> DkimKey:
        """A new signing key for a served domain (:class:`Conflict` if it has one and not
        ``replace``); the caller publishes its DNS record."""
        name = validated_domain(domain)
        now = self.clock.now()
        chosen = dkim_keys.validated_selector(
            selector if selector is not None else dkim_keys.default_selector(now))
        key = dkim_keys.new_key(name, chosen, now)
        self.repo.put_dkim_key(key, replace=replace)
        return key

    def dkim_keys(self) -> list[DkimKey]:
        return self.repo.dkim_keys()

    def remove_dkim_key(self, domain: str) -> DkimKey:
        return self.repo.remove_dkim_key(validated_domain(domain))

    # -- lists and aliases --------------------------------------------------------------

    def create_list(self, address: str, *, kind: str | ListKind = ListKind.LIST,
                    name: str = "", priority: int = 0) -> MailingList:
        return self.repo.create_list(validated_list_address(address), validated_kind(kind),
                                     validated_list_name(name), validated_priority(priority),
                                     self.clock.now())

    def update_list(self, address: str, *, kind: str | ListKind | None = None,
                    name: str | None = None, priority: int | None = None,
                    forward_style: str | ForwardStyle | None = None,
                    dmarc: str | DmarcMode | None = None,
                    posting: str | PostingPolicy | None = None,
                    non_member_action: str | NonMemberAction | None = None,
                    hold_days: int | None = None,
                    decoration: Mapping[str, str] | None = None,
                    personalize: bool | None = None,
                    bounce_threshold: float | None = None) -> MailingList:
        """Change the settings given (``None``: leave as is); returns the list as stored.

        ``personalize`` and ``bounce_threshold`` are for lists (bounce processing and
        per-member copies are a list's; an alias forward has its own envelope sender).

        ``fwd`` is for aliases only: a list's copies carry its List-* fields on the
        original message, and a list stays ``resend`` (refused, or when made an alias
        later, it may be set then).  ``decoration``: keyword arguments of
        :func:`validated_decoration` (subject prefix, Reply-To, templates, archive URL),
        for lists only: an alias passes personal mail on undecorated.
        """
        address = validated_address(address)
        changes = validated_decoration(**decoration) if decoration else None
        resulting = (validated_kind(kind) if kind is not None else
                     self.repo.get_list(address).kind) if changes else ListKind.LIST
        if resulting is not ListKind.LIST:
            raise InvalidInput(f"{address} is not a list: subject prefix, Reply-To, "
                               "templates and archive are for lists (aliases pass mail on "
                               "as it came)")
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
        if bounce_threshold is not None:
            bounce_threshold = validated_bounce_threshold(bounce_threshold)
        if personalize or bounce_threshold is not None:
            current = self.repo.get_list(address)
            if (new_kind or current.kind) is not ListKind.LIST:
                raise InvalidInput(f"{address} is not a list: personalization and the bounce "
                                   "threshold are settings of lists")
        return self.repo.update_list(
            address, kind=new_kind,
            name=None if name is None else validated_list_name(name),
            priority=None if priority is None else validated_priority(priority),
            forward_style=style,
            dmarc=None if dmarc is None else validated_dmarc_mode(dmarc),
            posting=None if posting is None else validated_posting(posting),
            non_member_action=(None if non_member_action is None
                               else validated_non_member_action(non_member_action)),
            hold_days=None if hold_days is None else validated_hold_days(hold_days),
            decoration=changes, personalize=personalize, bounce_threshold=bounce_threshold)

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

    def add_members(self, list_address: str, members: Sequence[str], *,
                    name: str = "", role: str | MemberRole | None = None) -> AddedMembers:
        """Add members (all valid, or none added); ``name``: the display name of the one
        member given (a member already there takes it); ``role``: theirs (members
        already there take it too; None: ``member`` for new ones, others keep theirs)."""
        if name and len(members) != 1:
            raise InvalidInput(f"a display name is for one member; {len(members)} addresses "
                               "were given with it")
        return self.import_members(list_address, [(m, name) for m in members], role=role)

    def import_members(self, list_address: str, rows: Sequence[tuple[str, str]], *,
                       role: str | MemberRole | None = None) -> AddedMembers:
        """Add (address, display name) rows: all valid, or none added.  A member already
        there keeps its status, and takes a non-empty name given for it."""
        valid_role = None if role is None else validated_role(role)
        names: dict[str, str] = {}
        for address, name in rows:
            canonical, valid_name = validated_address(address), validated_member_name(name)
            if valid_name or canonical not in names:  # a name given twice: the last
                names[canonical] = valid_name
        address = validated_address(list_address)
        return self.repo.add_members(address, validated_targets(address, names),
                                     self.clock.now(), names=names, role=valid_role)

    def set_role(self, list_address: str, members: Sequence[str],
                 role: str | MemberRole) -> int:
        """Give members of a list a role; returns how many of them are members."""
        return self.repo.set_role(validated_address(list_address),
                                  validated_addresses(members), validated_role(role))

    def import_member_rows(self, list_address: str, rows: Sequence[MemberRow], *,
                           dry_run: bool = False) -> MemberImport:
        """Add the valid rows of a member file and report each invalid one by its line
        (the API's import; :meth:`import_members` adds all or nothing).  ``dry_run``:
        validate only."""
        address = validated_address(list_address)
        names: dict[str, str] = {}
        problems: list[RowProblem] = []
        for row in rows:
            try:
                canonical = validated_address(row.address)
                valid_name = validated_member_name(row.name)
                _refuse_itself(address, canonical)
            except InvalidInput as exc:
                problems.append(RowProblem(row.line, row.address, str(exc)))
                continue
            if valid_name or canonical not in names:
                names[canonical] = valid_name
        valid = len(rows) - len(problems)
        if dry_run or not names:
            self.repo.get_list(address)  # a missing list is a NotFound, dry or not
            return MemberImport(valid, problems=problems)
        added = self.repo.add_members(address, list(names), self.clock.now(), names=names)
        return MemberImport(valid, added.added, added.existing, added.renamed, problems)

    def members_page(self, list_address: str, limit: int, after: str = "",
                     search: str = "") -> list[Member]:
        """One page of a roster by address (``after``: the last address of the page
        before), optionally only members whose address or name contains ``search``."""
        return self.repo.members_page(validated_address(list_address), limit, after,
                                      search.strip().lower())

    def remove_members(self, list_address: str, members: Sequence[str]) -> int:
        """Remove members; returns how many were members."""
        return self.repo.remove_members(validated_address(list_address),
                                        validated_addresses(members))

    def members(self, list_address: str) -> list[Member]:
        return self.repo.members(validated_address(list_address))

    def get_member(self, list_address: str, address: str) -> Member:
        return self.repo.member(validated_address(list_address), validated_address(address))

    def update_member(self, list_address: str, address: str, *,
                      role: str | MemberRole | None = None, name: str | None = None,
                      enable: bool = False) -> Member:
        """Change one member: its role, its display name (a non-empty one), or make it
        active again with a bounce score of 0 (``enable``, as ``mailflow member enable``);
        :class:`NotFound` if it is not a member.  Returns it as stored."""
        target, member = validated_address(list_address), validated_address(address)
        valid_role = None if role is None else validated_role(role)
        valid_name = None if name is None else validated_member_name(name)
        self.repo.member(target, member)
        if valid_role is not None:
            self.repo.set_role(target, [member], valid_role)
        if valid_name:
            self.repo.add_members(target, [member], self.clock.now(),
                                  names={member: valid_name})
        if enable:
            self.repo.enable_members(target, [member])
        return self.repo.member(target, member)

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
                        attachment: str | None = None, not_encrypted: bool = False,
                        add_header: str | None = None) -> FilterRule:
        """Add a rule after the list's others (tried in that order; first match wins).

        ``add_header``: the ``Name: value`` field of a ``tag`` rule (kept as its text).
        """
        target = validated_address(address)
        condition, name, argument = validated_filter_condition(
            header=header, matches=matches, body=body, larger_than=larger_than,
            attachment=attachment, not_encrypted=not_encrypted)
        chosen = validated_filter_action(action)
        text = _header_safe_text(text.strip(), "text", FILTER_TEXT_MAX_LENGTH)
        if chosen is FilterAction.TAG:
            if add_header is None or text:
                raise InvalidInput("a tag rule adds the field given as --add-header "
                                   "'Name: value' (and takes no --text)")
            text = validated_tag_field(add_header)
        elif add_header is not None:
            raise InvalidInput("--add-header goes with --action tag only")
        if chosen is FilterAction.STRIP and condition is not FilterCondition.ATTACHMENT:
            raise InvalidInput("a strip rule removes the attachments its condition names: "
                               "give --attachment GLOB")
        rule = FilterRule(target, condition, argument, chosen, name, text,
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

    def held_messages(self, list_address: str | None = None) -> list[HeldMessage]:
        """Held messages, oldest first; those held for one list or alias if given."""
        found = self.repo.held_messages()
        if list_address is None:
            return found
        target = self.repo.get_list(validated_address(list_address)).address
        return [m for m in found
                if any(addresses.untagged(addresses.canonical(r))[0] == target
                       for r in m.rcpt_tos)]

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

    # -- auto-replies -------------------------------------------------------------------

    def set_autoreply(self, address: str, *, body: str,
                      subject: str = AUTOREPLY_DEFAULT_SUBJECT, starts: str | None = None,
                      ends: str | None = None, once_per_days: int = 7) -> AutoReply:
        """Turn on (or replace) the out-of-office reply of a list or alias."""
        canonical = validated_address(address)
        target = self.repo.get_list(canonical)
        if target.kind is ListKind.ECHO:
            raise InvalidInput(f"{canonical} is an echo address: it answers every message "
                               "already")
        starts_at = validated_date(starts, "start date")
        ends_at = validated_date(ends, "end date")
        if starts_at is not None and ends_at is not None and ends_at <= starts_at:
            raise InvalidInput(f"the end date {ends} is not after the start date {starts}")
        reply = AutoReply(
            canonical,
            validated_template(subject, "subject", AUTOREPLY_SUBJECT_MAX, one_line=True),
            validated_template(body, "body", AUTOREPLY_BODY_MAX, one_line=False),
            starts_at, ends_at, validated_once_per_days(once_per_days), self.clock.now())
        return self.repo.set_autoreply(reply)

    def clear_autoreply(self, address: str) -> bool:
        """Turn the reply off; whether there was one."""
        return self.repo.clear_autoreply(validated_address(address))

    def get_autoreply(self, address: str) -> AutoReply | None:
        return self.repo.get_autoreply(validated_address(address))
