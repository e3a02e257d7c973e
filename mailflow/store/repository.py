"""The storage port: domain operations over SQLite or PostgreSQL, nothing else.

Every method is synchronous and runs one short transaction.  The asynchronous parts of
the relay call them through :class:`mailflow.store.runner.StoreRunner`, which keeps them
off the event loop; the CLI calls them directly.  Callers pass ``now`` so tests can move
time instead of sleeping.
"""

from __future__ import annotations

import enum
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    Connection,
    Row,
    String,
    bindparam,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError

from mailflow import addresses
from mailflow.bounce_score import BouncePolicy
from mailflow.errors import Conflict, InvalidInput, NotFound
from mailflow.model import (
    BARE_ROLE,
    NO_DECORATION,
    PENDING_STATUSES,
    UNFINISHED_STATUSES,
    AddedMembers,
    AutoReply,
    BounceEventRow,
    BounceReport,
    Decoration,
    Delivery,
    DeliveryRow,
    DeliveryStatus,
    DkimKey,
    DmarcMode,
    Domain,
    Event,
    FilterAction,
    FilterCondition,
    FilterRule,
    ForwardStyle,
    GeneratedMessage,
    HeldMessage,
    HeldPost,
    InboundMessage,
    Lease,
    ListKind,
    MailingList,
    Member,
    MemberRole,
    MembershipChange,
    MemberStatus,
    MessageStatus,
    NewDelivery,
    NonMemberAction,
    Outcome,
    PostingPolicy,
    ProviderFeedback,
    ReplyTo,
    Resolution,
    RuleAction,
    RuleScope,
    SenderRule,
    SentCopy,
    SubscriptionPolicy,
    SubscriptionRequest,
    Suppression,
    role_alias,
    role_alias_by_id,
)
from mailflow.store import bounces as bounce_store
from mailflow.store import subscriptions as subscription_store
from mailflow.store.engine import Engines, upsert_insert
from mailflow.store.hot import HotStatements
from mailflow.store.notify import notify_queued
from mailflow.store.provider_ids import (
    fail_delivered,
    list_address_sent_as,
    record_provider_ids,
    sent_copies,
)
from mailflow.store.tables import (
    PENDING_SQL,
    autoreplies,
    autoreply_log,
    blobs,
    bounce_events,
    deliveries,
    dkim_keys,
    domains,
    events,
    filter_rules,
    held_posts,
    lists,
    members,
    messages,
    meta,
    sender_rules,
    ses_received,
    suppressions,
)
from mailflow.verp import Verp

PENDING = [status.value for status in PENDING_STATUSES]
INCREMENTAL_VACUUM = 2  # PRAGMA auto_vacuum's value for INCREMENTAL
RECLAIM_MIN_PAGES = 1024  # fewer free pages than this are left for new rows to reuse
UNFINISHED = [status.value for status in UNFINISHED_STATUSES]
ANALYZE_AFTER_MEMBERS = 10_000  # members added at once: statistics refreshed at once


def _list(row: Row[Any]) -> MailingList:
    return MailingList(id=row.id, address=row.address, kind=ListKind(row.kind), name=row.name,
                       priority=row.priority, created_at=row.created_at,
                       forward_style=ForwardStyle(row.forward_style),
                       dmarc=DmarcMode(row.dmarc),
                       posting=PostingPolicy(row.posting),
                       non_member_action=NonMemberAction(row.non_member_action),
                       hold_days=row.hold_days,
                       decoration=_decoration(row),
                       personalize=bool(row.personalize),
                       bounce_threshold=row.bounce_threshold,
                       subscription=SubscriptionPolicy(row.subscription),
                       welcome_template=row.welcome_template,
                       goodbye_template=row.goodbye_template)


# Every list object read from the store shares one Decoration per distinct value: a
# list is read again for each RCPT its cache does not answer (``alias+1@``,
# ``alias+2@``... are 10,000 entries of known recipients), and its templates must not be
# held once per entry.  Weak values: a decoration no list object holds any more goes.
_DECORATIONS: weakref.WeakValueDictionary[tuple[str, ...], Decoration] = \
    weakref.WeakValueDictionary()


def _decoration(row: Row[Any]) -> Decoration:
    if not (row.subject_prefix or row.header_template or row.footer_template
            or row.archive_url or row.reply_to != ReplyTo.NONE.value):
        return NO_DECORATION  # most lists
    key = (row.subject_prefix, row.reply_to, row.header_template, row.footer_template,
           row.archive_url)
    found = _DECORATIONS.get(key)
    if found is None:
        found = Decoration(*key)
        # The key holds the decoration's own strings, not copies of them.
        _DECORATIONS[(found.subject_prefix, found.reply_to, found.header_template,
                      found.footer_template, found.archive_url)] = found
    return found


def _message(row: Row[Any]) -> InboundMessage:
    return InboundMessage(
        id=row.id, mail_from=row.mail_from, rcpt_tos=tuple(row.rcpt_tos.split("\n")),
        blob=row.blob, size=row.size, received_at=row.received_at, peer=row.peer,
        helo=row.helo, protocol=row.protocol, status=MessageStatus(row.status),
        header_id=row.header_id,
    )


def _autoreply(address: str, row: Row[Any]) -> AutoReply:
    return AutoReply(address, row.subject, row.body, row.starts_at, row.ends_at,
                     row.once_per_days, row.created_at)


def _sender_rule(row: Row[Any]) -> SenderRule:
    return SenderRule(RuleAction(row.action), row.pattern, row.target, row.created_at)


# A sender pattern's ``*`` and ``?`` become LIKE's ``%`` and ``_``; a literal ``%``,
# ``_`` or ``\`` is escaped.  The same LIKE on SQLite and PostgreSQL: patterns and
# senders are both in lower case, so SQLite's case-folding LIKE changes nothing.
_LIKE_ESCAPE = "\\"
_TO_LIKE = str.maketrans({"\\": "\\\\", "%": "\\%", "_": "\\_", "*": "%", "?": "_"})
# Text searched for as it is (members_page): every LIKE wildcard escaped.
_TO_LITERAL_LIKE = str.maketrans({"\\": "\\\\", "%": "\\%", "_": "\\_"})


def like_pattern(pattern: str) -> str:
    """The SQL LIKE form of a sender pattern (``*`` any run, ``?`` one character)."""
    return pattern.translate(_TO_LIKE)


def _rule_list(action: RuleAction, target: str) -> str:
    """How a sentence names one list of entries: ``the block list for example.test``."""
    return f"the {action.value} list for {target or 'every recipient'}"


def _resolve(conn: Connection, address: str, roles: Mapping[str, str]) -> Resolution:
    """What ``address`` is; ``roles``: the role aliases configured (role -> target).

    The exact address first, then a list's bounce address (also with a VERP token,
    ``list-bounces+<token>@d``: the token is the resolution's ``detail``), then a list's
    robot addresses (``list-join@``, ``-leave@``, ``-request@``: "request"; ``-owner@``:
    "owner"), then the address without its plus tag (``alias+tag@d`` reaches
    ``alias@d``), all in one statement; a list or alias of that address comes before a
    role alias, so an operator may make ``postmaster@<domain>`` a list of their own.
    """
    local, domain = addresses.split(address)
    candidates = [address]
    bounces = untagged = robot = robot_kind = ""
    base, tag = addresses.untagged(address)
    bounce_local = addresses.split(base)[0] if tag else local
    if bounce_local.endswith(addresses.BOUNCES_SUFFIX):
        bounces = f"{bounce_local[:-len(addresses.BOUNCES_SUFFIX)]}@{domain}"
        candidates.append(bounces)
    for suffix, kind in addresses.ROBOT_SUFFIXES.items():
        if local.endswith(suffix) and len(local) > len(suffix):
            robot, robot_kind = f"{local[:-len(suffix)]}@{domain}", kind
            candidates.append(robot)
            break
    if tag:
        untagged = base
        candidates.append(untagged)
    rows = conn.execute(_LISTS_BY_ADDRESS, {"b_addresses": candidates}).all()
    if not rows:
        known = bool(domain) and conn.scalar(_DOMAIN_ID, {"b_name": domain}) is not None
        if local in roles and (known or (not domain and local == BARE_ROLE)):
            return Resolution("list", role_alias(local))
        return Resolution("unknown_address" if known else "unknown_domain")
    found = {row.address: _list(row) for row in rows}
    if address in found:
        return Resolution("list", found[address])
    if bounces in found:
        return Resolution("bounces", found[bounces], tag)
    if robot in found and found[robot].kind is ListKind.LIST:  # an alias has no robots
        if robot_kind == "owner":
            return Resolution("owner", found[robot])
        return Resolution("request", found[robot], robot_kind)
    if untagged in found:
        return Resolution("list", found[untagged])
    return Resolution("unknown_address")


def _role_address(list_id: int) -> str | None:
    role = role_alias_by_id(list_id)
    return None if role is None else role.address


def _active_members(conn: Connection, list_id: int) -> list[str]:
    return list(conn.scalars(_ACTIVE_MEMBERS, {"b_list_id": list_id}))


# Statements on the hot path, built once: building and hashing a statement per call
# cost as much as running it.
_LISTS_BY_ADDRESS = select(lists).where(lists.c.address.in_(bindparam("b_addresses",
                                                                      expanding=True)))
_DOMAIN_ID = select(domains.c.id).where(domains.c.name == bindparam("b_name"))
# Suppressed addresses (``mailflow suppress``) are left out here, at expansion.
_ACTIVE_MEMBERS = (select(members.c.address)
                   .where(members.c.list_id == bindparam("b_list_id"),
                          members.c.status == MemberStatus.ACTIVE.value,
                          bounce_store.not_suppressed(bindparam("b_list_id")))
                   .order_by(members.c.id))
_ROSTER = select(members.c.address).where(members.c.list_id == bindparam("b_list_id"))
_MESSAGES_BY_ID = select(messages).where(messages.c.id.in_(bindparam("b_ids", expanding=True)))
_LISTS_BY_ID = select(lists).where(lists.c.id.in_(bindparam("b_ids", expanding=True)))
# The partial index's own predicate, as text: with the statuses as bound parameters
# SQLite cannot tell the index applies, and scans the table at every idle poll.
_NEXT_DUE = select(func.min(deliveries.c.due_at)).where(text(PENDING_SQL))
_LEASES_BY_ID = (select(deliveries.c.id, deliveries.c.lease_owner, deliveries.c.status)
                 .where(deliveries.c.id.in_(bindparam("b_ids", expanding=True))))
_IDS_PER_LOOKUP = 1000  # ids in one IN list (SQLite allows 32,766 variables)
# Every entry, of any scope, whose pattern matches one sender: what the accept chain
# needs for all of a message's recipients (the entries are few; a sender matches fewer).
_RULES_MATCHING = (select(sender_rules.c.action, sender_rules.c.pattern, sender_rules.c.target,
                          sender_rules.c.created_at)
                   .where(bindparam("b_sender", type_=String())
                          .like(sender_rules.c.like_pattern, escape=_LIKE_ESCAPE)))
_RULE_COUNT = select(func.count()).select_from(sender_rules)
# The filter rules of all of a message's recipients, in the order they are tried.
_FILTERS_FOR = (select(filter_rules)
                .where(filter_rules.c.target.in_(bindparam("b_targets", expanding=True)))
                .order_by(filter_rules.c.target, filter_rules.c.id))
_FILTER_COUNT = select(func.count()).select_from(filter_rules)
# The roles of a message's senders on its lists (the posting policy), one statement.
_ROSTER_ROLES = (select(members.c.list_id, members.c.address, members.c.role)
                 .where(members.c.list_id.in_(bindparam("b_lists", expanding=True)),
                        members.c.address.in_(bindparam("b_addresses", expanding=True))))


def _member(r: Row[Any]) -> Member:
    return Member(list_id=r.list_id, address=r.address, status=MemberStatus(r.status),
                  created_at=r.created_at, name=r.name, role=MemberRole(r.role),
                  bounce_score=r.bounce_score, last_bounce_at=r.last_bounce_at)


_DKIM_KEY = select(dkim_keys).where(dkim_keys.c.domain == bindparam("b_domain"))


def _dkim_key(row: Row[Any]) -> DkimKey:
    return DkimKey(row.domain, row.selector, row.private_key, row.public_key, row.created_at)


def _filter_rule(row: Row[Any]) -> FilterRule:
    return FilterRule(target=row.target, condition=FilterCondition(row.condition),
                      argument=row.argument, action=FilterAction(row.action),
                      header=row.header, text=row.text, id=row.id, created_at=row.created_at)


_AUTOREPLY_LISTS = select(autoreplies.c.list_id)
_AUTOREPLY_OF = select(autoreplies).where(autoreplies.c.list_id == bindparam("b_list_id"))
_LAST_REPLY = select(autoreply_log.c.replied_at).where(
    autoreply_log.c.list_id == bindparam("b_list_id"),
    autoreply_log.c.sender == bindparam("b_sender"))


class DirectoryView:
    """Directory look-ups on one open connection, remembered for one batch of messages."""

    def __init__(self, conn: Connection, roles: Mapping[str, str],
                 verp: Verp | None = None) -> None:
        self._conn = conn
        self._roles = roles
        self._verp = verp
        self._resolved: dict[str, Resolution] = {}
        self._members: dict[int, list[str]] = {}
        self._with_autoreply: set[int] | None = None  # read once per batch: few rows
        self._autoreplies: dict[int, AutoReply | None] = {}
        self._replied: dict[tuple[int, str], float | None] = {}
        self._commands_answered: dict[str, int] = {}

    def resolve(self, address: str) -> Resolution:
        if address not in self._resolved:
            self._resolved[address] = _resolve(self._conn, address, self._roles)
        return self._resolved[address]

    def active_member_addresses(self, list_id: int) -> list[str]:
        if list_id not in self._members:
            role = role_alias_by_id(list_id)
            if role is None:
                self._members[list_id] = _active_members(self._conn, list_id)
            else:  # its one target is the setting (none if it was unset since)
                target = self._roles.get(role.address)
                self._members[list_id] = [target] if target else []
        return self._members[list_id]

    def autoreply(self, mailing_list: MailingList) -> AutoReply | None:
        """The list's out-of-office reply: one query for the batch, then only for lists
        that have one."""
        if self._with_autoreply is None:
            self._with_autoreply = set(self._conn.scalars(_AUTOREPLY_LISTS))
        if mailing_list.id not in self._with_autoreply:
            return None
        if mailing_list.id not in self._autoreplies:
            row = self._conn.execute(_AUTOREPLY_OF, {"b_list_id": mailing_list.id}).first()
            self._autoreplies[mailing_list.id] = (
                _autoreply(mailing_list.address, row) if row else None)
        return self._autoreplies[mailing_list.id]

    def last_reply(self, list_id: int, sender: str) -> float | None:
        """When the list last answered ``sender`` (canonical), or None."""
        key = (list_id, sender)
        if key not in self._replied:
            self._replied[key] = self._conn.scalar(
                _LAST_REPLY, {"b_list_id": list_id, "b_sender": sender})
        return self._replied[key]

    def note_reply(self, list_id: int, sender: str, now: float) -> None:
        self._replied[(list_id, sender)] = now

    def roster(self, list_id: int) -> list[str]:
        return list(self._conn.scalars(_ROSTER, {"b_list_id": list_id}))

    def verp_member(self, mailing_list: MailingList, token: str) -> str | None:
        """One HMAC per member of the list: bounces are rare next to posts."""
        if self._verp is None:
            return None
        return self._verp.member(mailing_list.address, token, self.roster(mailing_list.id))

    def is_member(self, list_id: int, address: str) -> bool:
        return subscription_store.is_member(self._conn, list_id, address)

    def staff(self, list_id: int, roles: Sequence[MemberRole]) -> list[str]:
        return subscription_store.staff(self._conn, list_id, roles)

    def command_replies(self, address: str, now: float) -> int:
        if address not in self._commands_answered:
            self._commands_answered[address] = subscription_store.replies_today(
                self._conn, address, now)
        return self._commands_answered[address]

    def note_command_reply(self, address: str) -> None:
        self._commands_answered[address] = self._commands_answered.get(address, 0) + 1


class Repository:
    """Domain operations on the relay's tables."""

    def __init__(self, engines: Engines, roles: Mapping[str, str] | None = None,
                 verp: Verp | None = None) -> None:
        """``roles``: the role aliases configured, role -> target address (see
        ``model.ROLE_ALIAS_IDS`` and ``Settings.role_addresses``); none by default.
        ``verp``: what decodes the VERP tokens of bounces (none: bounces are parsed)."""
        self.engines = engines
        self.roles: Mapping[str, str] = dict(roles or {})
        self.verp = verp
        self._upsert_insert = upsert_insert(engines.dialect)
        self._hot = HotStatements.for_dialect(engines.dialect,
                                              engines.writer.dialect.paramstyle)

    @contextmanager
    def _relaxed_transaction(self) -> Iterator[Connection]:
        """A write transaction that commits without waiting for the disk.

        For bookkeeping whose loss in a power failure (not a process crash: the write is
        in the OS already) costs a repeat, never a message: an expansion is redone, a
        claim returns to the queue, a recorded outcome is retried (at least once).  The
        ingest commit behind a 250 is always fully synchronous.
        """
        with self.engines.writer.connect() as conn:
            if self.engines.is_sqlite:
                sqlite_connection: Any = conn.connection.driver_connection
                sqlite_connection.execute("PRAGMA synchronous=NORMAL")
                try:
                    with conn.begin():
                        yield conn
                finally:
                    sqlite_connection.execute("PRAGMA synchronous=FULL")
            else:
                with conn.begin():
                    conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                    yield conn

    # -- meta ---------------------------------------------------------------------------

    def ensure_meta(self, key: str, value: str) -> str:
        """Set ``key`` unless it is set already; return the stored value."""
        with self.engines.writer.begin() as conn:
            stmt = self._upsert_insert(meta).values(key=key, value=value)
            conn.execute(stmt.on_conflict_do_nothing(index_elements=["key"]))
            return str(conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar_one())

    # -- domains ------------------------------------------------------------------------

    def add_domain(self, name: str, now: float) -> Domain:
        try:
            with self.engines.writer.begin() as conn:
                new_id = conn.scalar(
                    insert(domains).values(name=name, created_at=now).returning(domains.c.id)
                )
        except IntegrityError:
            raise Conflict("domain", name, f"domain {name} exists already") from None
        return Domain(id=new_id, name=name, created_at=now)

    def domains(self) -> list[Domain]:
        with self.engines.reader.connect() as conn:
            rows = conn.execute(select(domains).order_by(domains.c.name)).all()
        return [Domain(id=r.id, name=r.name, created_at=r.created_at) for r in rows]

    def remove_domain(self, name: str) -> None:
        with self.engines.writer.begin() as conn:
            domain_id = conn.scalar(select(domains.c.id).where(domains.c.name == name))
            if domain_id is None:
                raise NotFound("domain", name)
            used = conn.scalar(select(func.count()).where(lists.c.domain_id == domain_id))
            if used:
                raise Conflict("domain", name,
                               f"domain {name} still has {used} list(s) or alias(es)",
                               dependents=used)
            conn.execute(delete(sender_rules).where(sender_rules.c.target == name))
            conn.execute(delete(dkim_keys).where(dkim_keys.c.domain == name))
            conn.execute(delete(domains).where(domains.c.id == domain_id))

    # -- lists and aliases --------------------------------------------------------------

    def create_list(self, address: str, kind: ListKind, name: str, priority: int,
                    now: float) -> MailingList:
        """Store a list or alias; the caller validated the values (see DirectoryService).

        A ``-bounces`` address is refused here too: recipient resolution relies on it.
        """
        local, domain = addresses.split(address)
        if local.endswith(addresses.BOUNCES_SUFFIX):
            raise InvalidInput(f"addresses ending in {addresses.BOUNCES_SUFFIX} are reserved "
                               "for the bounces of lists")
        with self.engines.writer.begin() as conn:
            domain_id = conn.scalar(select(domains.c.id).where(domains.c.name == domain))
            if domain_id is None:
                raise NotFound("domain", domain, f"domain {domain} is not served here")
            if conn.scalar(select(lists.c.id).where(lists.c.address == address)):
                raise Conflict("list", address)
            new_id = conn.scalar(
                insert(lists).values(domain_id=domain_id, address=address, kind=kind.value,
                                     name=name, priority=priority, created_at=now)
                .returning(lists.c.id)
            )
        return MailingList(id=new_id, address=address, kind=kind, name=name, priority=priority,
                           created_at=now)

    def update_list(self, address: str, *, kind: ListKind | None = None,
                    name: str | None = None, priority: int | None = None,
                    forward_style: ForwardStyle | None = None,
                    dmarc: DmarcMode | None = None,
                    posting: PostingPolicy | None = None,
                    non_member_action: NonMemberAction | None = None,
                    hold_days: int | None = None,
                    decoration: Mapping[str, str] | None = None,
                    personalize: bool | None = None,
                    bounce_threshold: float | None = None,
                    subscription: SubscriptionPolicy | None = None,
                    greetings: Mapping[str, str] | None = None) -> MailingList:
        """Change the given settings of a list or alias; returns it as stored now.

        ``decoration``: new values of :class:`~mailflow.model.Decoration` fields by name;
        ``greetings``: of ``welcome_template`` and ``goodbye_template``.
        """
        values: dict[str, Any] = {**(decoration or {}), **(greetings or {})}
        if subscription is not None:
            values["subscription"] = subscription.value
        for column, value in (("posting", posting), ("non_member_action", non_member_action),
                              ("hold_days", hold_days), ("personalize", personalize),
                              ("bounce_threshold", bounce_threshold)):
            if value is not None:
                values[column] = value
        if forward_style is not None:
            values["forward_style"] = forward_style.value
        if dmarc is not None:
            values["dmarc"] = dmarc.value
        if kind is not None:
            values["kind"] = kind.value
        if name is not None:
            values["name"] = name
        if priority is not None:
            values["priority"] = priority
        with self.engines.writer.begin() as conn:
            if values:
                row = conn.execute(update(lists).where(lists.c.address == address)
                                   .values(**values).returning(*lists.c)).first()
            else:
                row = conn.execute(select(lists).where(lists.c.address == address)).first()
        if row is None:
            raise NotFound("list", address)
        return _list(row)

    def find_list(self, address: str) -> MailingList | None:
        with self.engines.reader.connect() as conn:
            row = conn.execute(select(lists).where(lists.c.address == address)).first()
        return _list(row) if row else None

    def get_list(self, address: str) -> MailingList:
        found = self.find_list(address)
        if found is None:
            raise NotFound("list", address)
        return found

    def lists_with_counts(self) -> list[tuple[MailingList, int]]:
        counts = (select(members.c.list_id, func.count().label("n"))
                  .group_by(members.c.list_id).subquery())
        query = (select(lists, func.coalesce(counts.c.n, 0).label("n"))
                 .outerjoin(counts, counts.c.list_id == lists.c.id).order_by(lists.c.address))
        with self.engines.reader.connect() as conn:
            return [(_list(row), row.n) for row in conn.execute(query)]

    def delete_list(self, address: str, now: float) -> int:
        """Delete a list and its roster; its pending deliveries fail. Returns how many."""
        with self.engines.writer.begin() as conn:
            list_id = conn.scalar(select(lists.c.id).where(lists.c.address == address))
            if list_id is None:
                raise NotFound("list", address)
            failed = conn.execute(
                update(deliveries)
                .where(deliveries.c.list_id == list_id, deliveries.c.status.in_(UNFINISHED))
                .values(status=DeliveryStatus.FAILED.value, updated_at=now,
                        last_reply="list deleted before delivery", lease_owner=None)
            ).rowcount
            conn.execute(delete(members).where(members.c.list_id == list_id))
            conn.execute(delete(sender_rules).where(sender_rules.c.target == address))
            conn.execute(delete(autoreplies).where(autoreplies.c.list_id == list_id))
            conn.execute(delete(autoreply_log).where(autoreply_log.c.list_id == list_id))
            conn.execute(delete(filter_rules).where(filter_rules.c.target == address))
            conn.execute(delete(held_posts).where(held_posts.c.list_id == list_id))
            conn.execute(delete(suppressions).where(suppressions.c.target == address))
            conn.execute(delete(bounce_events).where(bounce_events.c.list_id == list_id))
            conn.execute(delete(lists).where(lists.c.id == list_id))
        return failed

    def resolve(self, address: str) -> Resolution:
        """Decide what a recipient address is: list/alias, list bounces, or unknown."""
        with self.engines.reader.connect() as conn:
            return _resolve(conn, address, self.roles)

    # -- auto-replies -------------------------------------------------------------------

    def set_autoreply(self, reply: AutoReply) -> AutoReply:
        """Store (or replace) the reply of a list or alias; the caller validated it."""
        values = {"subject": reply.subject, "body": reply.body,
                  "starts_at": reply.starts_at, "ends_at": reply.ends_at,
                  "once_per_days": reply.once_per_days, "created_at": reply.created_at}
        with self.engines.writer.begin() as conn:
            list_id = self._list_id(conn, reply.address)
            conn.execute(self._upsert_insert(autoreplies).values(list_id=list_id, **values)
                         .on_conflict_do_update(index_elements=["list_id"], set_=values))
        return reply

    def clear_autoreply(self, address: str) -> bool:
        """Remove the reply (and forget whom it answered); whether there was one."""
        with self.engines.writer.begin() as conn:
            list_id = self._list_id(conn, address)
            removed = conn.execute(delete(autoreplies)
                                   .where(autoreplies.c.list_id == list_id)).rowcount
            conn.execute(delete(autoreply_log).where(autoreply_log.c.list_id == list_id))
        return bool(removed)

    def get_autoreply(self, address: str) -> AutoReply | None:
        with self.engines.reader.connect() as conn:
            list_id = self._list_id(conn, address)
            row = conn.execute(_AUTOREPLY_OF, {"b_list_id": list_id}).first()
        return _autoreply(address, row) if row else None

    def last_reply(self, address: str, sender: str) -> float | None:
        with self.engines.reader.connect() as conn:
            return DirectoryView(conn, self.roles).last_reply(self._list_id(conn, address), sender)

    # -- sender rules (block and allow entries) -----------------------------------------

    def add_sender_rule(self, rule: SenderRule) -> SenderRule:
        """Store an entry; the caller validated it (see DirectoryService).

        A domain or address target must be a served domain or an existing list or alias:
        an entry for a typo would silently never apply.
        """
        target = rule.target
        try:
            with self.engines.writer.begin() as conn:
                if rule.scope is RuleScope.DOMAIN:
                    if conn.scalar(_DOMAIN_ID, {"b_name": target}) is None:
                        raise NotFound("domain", target, f"domain {target} is not served here")
                elif rule.scope is RuleScope.ADDRESS:
                    self._list_id(conn, target)
                conn.execute(insert(sender_rules).values(
                    action=rule.action.value, target=target, pattern=rule.pattern,
                    like_pattern=like_pattern(rule.pattern), created_at=rule.created_at))
        except IntegrityError:
            raise Conflict("rule", rule.pattern, f"{rule.pattern} is on "
                           f"{_rule_list(rule.action, target)} already") from None
        return rule

    def remove_sender_rule(self, action: RuleAction, pattern: str, target: str) -> None:
        with self.engines.writer.begin() as conn:
            removed = conn.execute(delete(sender_rules).where(
                sender_rules.c.action == action.value, sender_rules.c.target == target,
                sender_rules.c.pattern == pattern)).rowcount
        if not removed:
            raise NotFound("rule", pattern,
                           f"{pattern} is not on {_rule_list(action, target)}")

    def sender_rules(self, action: RuleAction | None = None,
                     target: str | None = None) -> list[SenderRule]:
        """Entries by scope (global, domains, addresses), then target and pattern."""
        query = select(sender_rules)
        if action is not None:
            query = query.where(sender_rules.c.action == action.value)
        if target is not None:
            query = query.where(sender_rules.c.target == target)
        with self.engines.reader.connect() as conn:
            found = [_sender_rule(row) for row in conn.execute(query)]
        return sorted(found, key=lambda r: (r.scope, r.target, r.pattern, r.action.value))

    def sender_rules_matching(self, sender: str) -> list[SenderRule]:
        """Every entry, of any scope and action, whose pattern matches ``sender`` (in
        canonical form): one statement, whatever the number of recipients."""
        with self.engines.reader.connect() as conn:
            rows = conn.execute(_RULES_MATCHING, {"b_sender": sender}).all()
        return [SenderRule(RuleAction(action), pattern, target, created_at)
                for action, pattern, target, created_at in rows]

    def count_sender_rules(self) -> int:
        with self.engines.reader.connect() as conn:
            return int(conn.scalar(_RULE_COUNT) or 0)

    # -- filter rules ---------------------------------------------------------------------

    def add_filter_rule(self, rule: FilterRule) -> FilterRule:
        """Store a rule (validated by the caller) after the target's others; the target
        must be an existing list or alias."""
        with self.engines.writer.begin() as conn:
            self._list_id(conn, rule.target)
            rule_id = conn.scalar(insert(filter_rules).values(
                target=rule.target, condition=rule.condition.value, header=rule.header,
                argument=rule.argument, action=rule.action.value, text=rule.text,
                created_at=rule.created_at).returning(filter_rules.c.id))
        return FilterRule(rule.target, rule.condition, rule.argument, rule.action,
                          rule.header, rule.text, int(rule_id or 0), rule.created_at)

    def filter_rules(self, target: str) -> list[FilterRule]:
        """A list's rules in the order they are tried; :class:`NotFound` without the list."""
        with self.engines.reader.connect() as conn:
            self._list_id(conn, target)
            rows = conn.execute(_FILTERS_FOR, {"b_targets": [target]}).all()
        return [_filter_rule(row) for row in rows]

    def remove_filter_rule(self, target: str, number: int) -> FilterRule:
        """Remove a list's ``number``-th rule (1-based, as ``filter ls`` shows them)."""
        with self.engines.writer.begin() as conn:
            self._list_id(conn, target)
            rows = conn.execute(_FILTERS_FOR, {"b_targets": [target]}).all()
            if not 1 <= number <= len(rows):
                raise NotFound("filter", str(number),
                               f"{target} has no filter rule {number} ({len(rows)} rule(s))")
            rule = _filter_rule(rows[number - 1])
            conn.execute(delete(filter_rules).where(filter_rules.c.id == rule.id))
        return rule

    def filter_rules_for(self, targets: Sequence[str]) -> list[FilterRule]:
        """The rules of every address of ``targets``, by target then order: one
        statement for all of a message's recipients."""
        with self.engines.reader.connect() as conn:
            rows = conn.execute(_FILTERS_FOR, {"b_targets": list(targets)}).all()
        return [_filter_rule(row) for row in rows]

    def count_filter_rules(self) -> int:
        with self.engines.reader.connect() as conn:
            return int(conn.scalar(_FILTER_COUNT) or 0)

    # -- SES notifications taken ---------------------------------------------------------

    def ses_outcome(self, ses_message_id: str) -> tuple[str, str] | None:
        """(status, our message id) of an SES ``mail.messageId`` handled before, or None."""
        with self.engines.reader.connect() as conn:
            row = conn.execute(select(ses_received.c.status, ses_received.c.message_id)
                               .where(ses_received.c.ses_message_id == ses_message_id)).first()
        return None if row is None else (row.status, row.message_id)

    def note_ses_outcome(self, ses_message_id: str, status: str, message_id: str,
                         now: float) -> None:
        """Remember what became of an SES message; a second note of it changes nothing.

        Relaxed: the message itself is durable already; losing this note in a power
        failure costs one duplicate copy if SES's notification comes again."""
        with self._relaxed_transaction() as conn:
            conn.execute(self._upsert_insert(ses_received).values(
                ses_message_id=ses_message_id, status=status, message_id=message_id,
                received_at=now).on_conflict_do_nothing())

    def purge_ses_outcomes(self, before: float) -> int:
        """Forget SES messages handled before ``before`` (SNS and SQS stop redelivering
        long before the message retention runs out)."""
        with self.engines.writer.begin() as conn:
            return conn.execute(delete(ses_received)
                                .where(ses_received.c.received_at < before)).rowcount
    # -- DKIM keys ------------------------------------------------------------------------

    def put_dkim_key(self, key: DkimKey, *, replace: bool = False) -> None:
        """Store a served domain's key; :class:`Conflict` if it has one and not ``replace``."""
        with self.engines.writer.begin() as conn:
            if conn.scalar(select(domains.c.id).where(domains.c.name == key.domain)) is None:
                raise NotFound("domain", key.domain)
            old = conn.scalar(select(dkim_keys.c.selector)
                              .where(dkim_keys.c.domain == key.domain))
            if old is not None and not replace:
                raise Conflict("dkim", key.domain, f"{key.domain} has a DKIM key already "
                               f"(selector {old})")
            conn.execute(delete(dkim_keys).where(dkim_keys.c.domain == key.domain))
            conn.execute(insert(dkim_keys).values(
                domain=key.domain, selector=key.selector, private_key=key.private_key,
                public_key=key.public_key, created_at=key.created_at))

    def dkim_keys(self) -> list[DkimKey]:
        with self.engines.reader.connect() as conn:
            rows = conn.execute(select(dkim_keys).order_by(dkim_keys.c.domain)).all()
        return [_dkim_key(row) for row in rows]

    def dkim_key(self, domain: str) -> DkimKey | None:
        """The key copies of ``domain`` are signed with (the send path asks this)."""
        with self.engines.reader.connect() as conn:
            row = conn.execute(_DKIM_KEY, {"b_domain": domain}).first()
        return None if row is None else _dkim_key(row)

    def remove_dkim_key(self, domain: str) -> DkimKey:
        with self.engines.writer.begin() as conn:
            row = conn.execute(_DKIM_KEY, {"b_domain": domain}).first()
            if row is None:
                raise NotFound("dkim", domain)
            conn.execute(delete(dkim_keys).where(dkim_keys.c.domain == domain))
        return _dkim_key(row)

    # -- held messages ------------------------------------------------------------------

    def held_messages(self, limit: int = 1000) -> list[HeldMessage]:
        """Messages a filter rule holds, oldest first, each with why (its ``held`` event)."""
        with self.engines.reader.connect() as conn:
            rows = conn.execute(select(messages)
                                .where(messages.c.status == MessageStatus.HELD.value)
                                .order_by(messages.c.received_at).limit(limit)).all()
            ids = [r.id for r in rows]
            reasons: dict[str, list[str]] = {}
            if ids:
                for message_id, detail in conn.execute(
                        select(events.c.message_id, events.c.detail)
                        .where(events.c.message_id.in_(ids), events.c.kind == "held")
                        .order_by(events.c.id)):
                    reasons.setdefault(message_id, []).append(detail)
        return [HeldMessage(r.id, r.mail_from, tuple(r.rcpt_tos.split("\n")), r.size,
                            r.received_at, "; ".join(reasons.get(r.id, [])))
                for r in rows]

    def release_held(self, message_id: str, now: float) -> None:
        """Hand a held message to the processor, which expands it as if just received."""
        with self.engines.writer.begin() as conn:
            self._take_held(conn, message_id, MessageStatus.RECEIVED, now)
            self._add_events(conn, [Event("released", "released by an owner", message_id)],
                             now)

    def discard_held(self, message_id: str, now: float) -> None:
        """Drop a held message: done, nothing delivered, its blob released."""
        with self.engines.writer.begin() as conn:
            self._take_held(conn, message_id, MessageStatus.DONE, now)
            self._release_blobs(conn, list(conn.scalars(
                select(messages.c.blob).where(messages.c.id == message_id))), now)
            self._add_events(conn, [Event("discarded", "held message discarded by an owner",
                                          message_id)], now)

    def held_message(self, message_id: str) -> tuple[InboundMessage, dict[str, str]]:
        """A held message and why it is held, by recipient (from its ``held`` events)."""
        with self.engines.reader.connect() as conn:
            row = conn.execute(select(messages).where(
                messages.c.id == message_id,
                messages.c.status == MessageStatus.HELD.value)).first()
            if row is None:
                raise NotFound("message", message_id, f"no held message {message_id}")
            return _message(row), self._hold_reasons(conn, [message_id]).get(message_id, {})

    @staticmethod
    def _hold_reasons(conn: Connection, ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """Why each message is held, by recipient: its ``held`` events say
        ``recipient: reason`` (see the accept service)."""
        found: dict[str, dict[str, str]] = {}
        for message_id, detail in conn.execute(
                select(events.c.message_id, events.c.detail)
                .where(events.c.message_id.in_(list(ids)), events.c.kind == "held")
                .order_by(events.c.id)):
            rcpt, _, reason = str(detail).partition(": ")
            found.setdefault(message_id, {})[rcpt] = reason
        return found

    def unannounced_held(self, limit: int) -> list[tuple[InboundMessage, dict[str, str]]]:
        """Held messages the moderators were not told about yet, oldest first, each with
        why it is held (by recipient)."""
        announced = select(held_posts.c.message_id).where(
            held_posts.c.message_id == messages.c.id).exists()
        with self.engines.reader.connect() as conn:
            rows = conn.execute(select(messages).where(
                messages.c.status == MessageStatus.HELD.value, ~announced)
                .order_by(messages.c.received_at).limit(limit)).all()
            reasons = self._hold_reasons(conn, [r.id for r in rows]) if rows else {}
        return [(_message(r), reasons.get(r.id, {})) for r in rows]

    def moderators(self, list_ids: Sequence[int],
                   roles: Sequence[MemberRole] = (MemberRole.OWNER, MemberRole.MODERATOR)
                   ) -> dict[int, list[str]]:
        """The active members of each list with one of ``roles`` (by default its owners
        and moderators), by list id."""
        found: dict[int, list[str]] = {}
        if not list_ids:
            return found
        with self.engines.reader.connect() as conn:
            for row in conn.execute(select(members.c.list_id, members.c.address).where(
                    members.c.list_id.in_(list(list_ids)),
                    members.c.status == MemberStatus.ACTIVE.value,
                    members.c.role.in_([role.value for role in roles]))
                    .order_by(members.c.id)):
                found.setdefault(row.list_id, []).append(row.address)
        return found

    def announce_held(self, posts: Sequence[HeldPost], notices: Sequence[GeneratedMessage],
                      planned: Sequence[NewDelivery], now: float) -> bool:
        """Record held posts with the notices to their moderators, in one transaction;
        nothing if the message is no longer held or was announced already (so each
        notice is sent once).  Returns whether they were recorded."""
        ids = {p.message_id for p in posts}
        with self.engines.writer.begin() as conn:
            still = set(conn.scalars(select(messages.c.id).where(
                messages.c.id.in_(list(ids)), messages.c.status == MessageStatus.HELD.value)))
            done = set(conn.scalars(select(held_posts.c.message_id).where(
                held_posts.c.message_id.in_(list(ids)))))
            if still != ids or done:
                return False
            conn.execute(insert(held_posts), [
                {"message_id": p.message_id, "list_id": p.list_id, "author": p.author,
                 "reason": p.reason, "created_at": now, "expires_at": p.expires_at}
                for p in posts])
            tx = WriteTransaction(self, conn)
            tx.insert_generated(notices, now)
            tx.insert_deliveries(planned, now)
            tx.add_events([Event("moderators_notified", f"{p.list_address}: "
                                 f"{len([d for d in planned if d.list_id == p.list_id])} "
                                 "owner(s) and moderator(s) told", p.message_id)
                           for p in posts], now)
        return True

    def expire_held(self, now: float, limit: int) -> list[str]:
        """Discard held posts whose time is up (a bounded batch, oldest first); returns
        their message ids."""
        with self.engines.writer.begin() as conn:
            due = list(dict.fromkeys(conn.scalars(
                select(held_posts.c.message_id).where(held_posts.c.expires_at <= now)
                .order_by(held_posts.c.expires_at).limit(limit))))
            expired = []
            for message_id in due:
                try:
                    self._take_held(conn, message_id, MessageStatus.DONE, now)
                except NotFound:  # approved or discarded meanwhile: only the rows remain
                    conn.execute(delete(held_posts).where(
                        held_posts.c.message_id == message_id))
                    continue
                expired.append(message_id)
            if expired:
                self._release_blobs(conn, list(conn.scalars(
                    select(messages.c.blob).where(messages.c.id.in_(expired)))), now)
                self._add_events(conn, [Event("expired", "held post expired unmoderated; "
                                                         "discarded", m) for m in expired], now)
        return expired

    def reject_held(self, message_id: str, reason: str, notices: Sequence[GeneratedMessage],
                    planned: Sequence[NewDelivery], now: float) -> None:
        """Drop a held message as refused by a moderator, and queue the notice to its
        author (if any) in the same transaction."""
        with self.engines.writer.begin() as conn:
            self._take_held(conn, message_id, MessageStatus.DONE, now)
            self._release_blobs(conn, list(conn.scalars(
                select(messages.c.blob).where(messages.c.id == message_id))), now)
            tx = WriteTransaction(self, conn)
            tx.insert_generated(notices, now)
            tx.insert_deliveries(planned, now)
            detail = "rejected by a moderator" + (f": {reason}" if reason else "")
            tx.add_events([Event("rejected", detail, message_id)], now)

    def _take_held(self, conn: Connection, message_id: str, status: MessageStatus,
                   now: float) -> None:
        changed = conn.execute(update(messages).where(
            messages.c.id == message_id, messages.c.status == MessageStatus.HELD.value)
            .values(status=status.value, updated_at=now)).rowcount
        if not changed:
            raise NotFound("message", message_id, f"no held message {message_id}")
        conn.execute(delete(held_posts).where(held_posts.c.message_id == message_id))

    # -- members ------------------------------------------------------------------------

    def add_members(self, list_address: str, new: Iterable[str], now: float,
                    status: MemberStatus = MemberStatus.ACTIVE,
                    names: Mapping[str, str] | None = None,
                    role: MemberRole | None = None) -> AddedMembers:
        """Add addresses to a roster, with the display names in ``names`` (by address).

        A member already there keeps its status; a non-empty name given for it replaces
        its name (an empty one never clears it).  New members get ``role`` (``member``
        if None); a ``role`` given is set on the members already there too.
        """
        wanted = list(dict.fromkeys(new))
        names = names or {}
        with self.engines.writer.begin() as conn:
            list_id = self._list_id(conn, list_address)
            existing: dict[str, str] = {row.address: row.name for row in conn.execute(
                select(members.c.address, members.c.name).where(members.c.list_id == list_id))}
            rows = [{"list_id": list_id, "address": a, "status": status.value,
                     "created_at": now, "name": names.get(a, ""),
                     "role": (role or MemberRole.MEMBER).value}
                    for a in wanted if a not in existing]
            if rows:
                conn.execute(insert(members), rows)
            if role is not None:
                self._set_role(conn, list_id, [a for a in wanted if a in existing], role)
            renamed = [{"b_address": a, "b_name": names[a]} for a in wanted
                       if a in existing and names.get(a) and names[a] != existing[a]]
            if renamed:
                conn.execute(update(members).where(members.c.list_id == list_id,
                                                   members.c.address == bindparam("b_address"))
                             .values(name=bindparam("b_name")), renamed)
        if len(rows) >= ANALYZE_AFTER_MEMBERS and not self.engines.is_sqlite:
            # PostgreSQL's statistics would still say the roster is small until
            # autovacuum's next round, and it would sort the whole roster for each
            # page instead of reading the (list_id, address) index in order.
            with self.engines.writer.connect() as conn:
                conn.exec_driver_sql("ANALYZE members")
                conn.commit()
        return AddedMembers(len(rows), len(wanted) - len(rows), len(renamed))

    def remove_members(self, list_address: str, gone: Iterable[str]) -> int:
        with self.engines.writer.begin() as conn:
            list_id = self._list_id(conn, list_address)
            return conn.execute(
                delete(members).where(members.c.list_id == list_id,
                                      members.c.address.in_(list(gone)))
            ).rowcount

    def members(self, list_address: str) -> list[Member]:
        with self.engines.reader.connect() as conn:
            list_id = self._list_id(conn, list_address)
            rows = conn.execute(select(members).where(members.c.list_id == list_id)
                                .order_by(members.c.address)).all()
        return [_member(r) for r in rows]

    def member(self, list_address: str, address: str) -> Member:
        """One member of a list; :class:`NotFound` if it is not one."""
        with self.engines.reader.connect() as conn:
            list_id = self._list_id(conn, list_address)
            row = conn.execute(select(members).where(members.c.list_id == list_id,
                                                     members.c.address == address)).first()
        if row is None:
            raise NotFound("member", address, f"{address} is not a member of {list_address}")
        return _member(row)

    def member_name(self, list_id: int, address: str) -> str:
        """A member's display name ('' if none, or no longer a member)."""
        with self.engines.reader.connect() as conn:
            return conn.scalar(select(members.c.name).where(
                members.c.list_id == list_id, members.c.address == address)) or ""

    def set_role(self, list_address: str, addresses_: Sequence[str], role: MemberRole) -> int:
        """Give members of a list ``role``; returns how many of them are members."""
        with self.engines.writer.begin() as conn:
            return self._set_role(conn, self._list_id(conn, list_address), addresses_, role)

    @staticmethod
    def _set_role(conn: Connection, list_id: int, addresses_: Sequence[str],
                  role: MemberRole) -> int:
        if not addresses_:
            return 0
        return int(conn.execute(update(members).where(
            members.c.list_id == list_id, members.c.address.in_(list(addresses_)))
            .values(role=role.value)).rowcount)

    def roster_roles(self, list_ids: Sequence[int], addresses_: Sequence[str]
                     ) -> dict[tuple[int, str], MemberRole]:
        """The role of each of ``addresses_`` on each of the lists, where it is a member:
        what the posting policy needs for a whole message, in one statement."""
        if not list_ids or not addresses_:
            return {}
        with self.engines.reader.connect() as conn:
            return {(row.list_id, row.address): MemberRole(row.role)
                    for row in conn.execute(_ROSTER_ROLES, {"b_lists": list(list_ids),
                                                            "b_addresses": list(addresses_)})}

    def enable_members(self, list_address: str, wanted: Iterable[str]) -> int:
        """Make members active again with a clean bounce record (after a bounce or a
        complaint disabled or unsubscribed them); returns how many were not active.

        A suppression stays: it is lifted on its own (``mailflow suppress remove``).
        """
        with self.engines.writer.begin() as conn:
            list_id = self._list_id(conn, list_address)
            return conn.execute(update(members).where(
                members.c.list_id == list_id, members.c.address.in_(list(wanted)),
                members.c.status != MemberStatus.ACTIVE.value).values(
                status=MemberStatus.ACTIVE.value, bounce_score=0.0, last_bounce_at=None,
                disabled_at=None, warnings_sent=0, last_warning_at=None)).rowcount

    # -- bounces and suppressions -------------------------------------------------------

    def count_bounces(self, reports: Sequence[BounceReport], now: float) -> list[Event]:
        """Count bounces against members (what the processing chain does in its
        transaction); returns the events written."""
        with self.engines.writer.begin() as conn:
            events = bounce_store.count_bounces(conn, reports, now)
            self._add_events(conn, events, now)
        return events

    def bounce_events(self, list_address: str | None = None,
                      limit: int = 1000) -> list[BounceEventRow]:
        """The newest bounces counted or seen, of one list or of all."""
        query = (select(bounce_events, lists.c.address.label("list_address"))
                 .join(lists, lists.c.id == bounce_events.c.list_id)
                 .order_by(bounce_events.c.created_at.desc(), bounce_events.c.id.desc())
                 .limit(limit))
        with self.engines.reader.connect() as conn:
            if list_address is not None:
                query = query.where(bounce_events.c.list_id == self._list_id(conn,
                                                                             list_address))
            return [BounceEventRow(r.list_address, r.address, r.kind, r.source, bool(r.counted),
                                   r.detail, r.created_at) for r in conn.execute(query)]

    def add_suppression(self, entry: Suppression) -> bool:
        """Whether it was new; a list target must exist."""
        with self.engines.writer.begin() as conn:
            if entry.target:
                self._list_id(conn, entry.target)
            return bounce_store.suppress(conn, entry.address, entry.target, entry.reason,
                                         entry.created_at)

    def remove_suppression(self, address: str, target: str) -> None:
        with self.engines.writer.begin() as conn:
            gone = conn.execute(delete(suppressions).where(
                suppressions.c.address == address, suppressions.c.target == target)).rowcount
        if not gone:
            where = f" for {target}" if target else ""
            raise NotFound("suppression", address, f"<{address}> is not suppressed{where}")

    def suppressions_page(self, target: str | None, limit: int,
                          after: tuple[str, str] | None = None) -> list[Suppression]:
        """Up to ``limit`` entries by (address, target), those after ``after`` (a
        cursor): a range read of ``uq_suppressions_entry``."""
        query = (select(suppressions).order_by(suppressions.c.address, suppressions.c.target)
                 .limit(limit))
        if target is not None:
            query = query.where(suppressions.c.target == target)
        if after is not None:
            query = query.where(tuple_(suppressions.c.address, suppressions.c.target)
                                > tuple_(literal(after[0]), literal(after[1])))
        with self.engines.reader.connect() as conn:
            return [Suppression(r.address, r.target, r.reason, r.created_at)
                    for r in conn.execute(query)]

    def suppressions(self, target: str | None = None) -> list[Suppression]:
        query = select(suppressions).order_by(suppressions.c.target, suppressions.c.address)
        if target is not None:
            query = query.where(suppressions.c.target == target)
        with self.engines.reader.connect() as conn:
            return [Suppression(r.address, r.target, r.reason, r.created_at)
                    for r in conn.execute(query)]

    def members_page(self, list_address: str, limit: int, after: str = "",
                     search: str = "") -> list[Member]:
        """Up to ``limit`` members by address, those after ``after`` (a cursor), whose
        address or name contains ``search`` (any case): one indexed range read."""
        query = (select(members).order_by(members.c.address).limit(limit))
        if after:
            query = query.where(members.c.address > after)
        if search:
            like = f"%{search.translate(_TO_LITERAL_LIKE)}%"
            query = query.where(or_(members.c.address.ilike(like, escape=_LIKE_ESCAPE),
                                    members.c.name.ilike(like, escape=_LIKE_ESCAPE)))
        with self.engines.reader.connect() as conn:
            list_id = self._list_id(conn, list_address)
            rows = conn.execute(query.where(members.c.list_id == list_id)).all()
        return [_member(r) for r in rows]

    def _list_id(self, conn: Connection, address: str) -> int:
        list_id = conn.scalar(select(lists.c.id).where(lists.c.address == address))
        if list_id is None:
            raise NotFound("list", address)
        return int(list_id)

    # -- inbound messages ---------------------------------------------------------------

    @contextmanager
    def ingest_transaction(self) -> Iterator[WriteTransaction]:
        """The ingest's group commit: fully synchronous, as the 250 waits for it."""
        with self.engines.writer.begin() as conn:
            yield WriteTransaction(self, conn)

    def subscription_requests(self, list_address: str | None = None
                              ) -> list[SubscriptionRequest]:
        """Requests to join waiting for an owner (of one list, or of every list)."""
        with self.engines.reader.connect() as conn:
            list_id = None if list_address is None else self._list_id(conn, list_address)
            return subscription_store.requests(conn, list_id)

    @contextmanager
    def expansion_transaction(self) -> Iterator[WriteTransaction]:
        """Expansion of stored messages: relaxed, as a loss only repeats the expansion."""
        with self._relaxed_transaction() as conn:
            yield WriteTransaction(self, conn)

    def _new_delivery_ids(self, conn: Connection, count: int) -> list[int]:
        """Ids for ``count`` deliveries about to be inserted in this transaction.

        SQLite: the writer holds the database lock, so max(id) cannot move under us.
        PostgreSQL: the column's own sequence, as its default would use it.
        """
        if self.engines.is_sqlite:
            first = int(conn.exec_driver_sql(
                "SELECT coalesce(max(id), 0) + 1 FROM deliveries").scalar_one())
            return list(range(first, first + count))
        return [int(i) for i in conn.exec_driver_sql(
            "SELECT nextval(pg_get_serial_sequence('deliveries', 'id')) "
            "FROM generate_series(1, %(n)s)", {"n": count}).scalars()]

    def has_received(self) -> bool:
        """Whether any message waits for expansion."""
        with self.engines.reader.connect() as conn:
            return conn.scalar(select(messages.c.id).where(
                messages.c.status == MessageStatus.RECEIVED.value).limit(1)) is not None

    def delivery_context(self, message_ids: Iterable[str], list_ids: Iterable[int]
                         ) -> tuple[dict[str, InboundMessage], dict[int, MailingList]]:
        """Messages and lists by id, in one round trip (what claimed deliveries need)."""
        with self.engines.reader.connect() as conn:
            found_messages = ({row.id: _message(row) for row in
                               conn.execute(_MESSAGES_BY_ID, {"b_ids": list(message_ids)})}
                              if message_ids else {})
            found_lists = ({row.id: _list(row) for row in
                            conn.execute(_LISTS_BY_ID, {"b_ids": list(list_ids)})}
                           if list_ids else {})
        for list_id in list_ids:
            if (role := role_alias_by_id(list_id)) is not None:
                found_lists[list_id] = role
        return found_messages, found_lists

    # -- the send queue -----------------------------------------------------------------

    def claim_due_deliveries(self, now: float, limit: int, lease: float,
                             owner: str) -> list[Delivery]:
        """Lease up to ``limit`` due deliveries, highest priority and oldest first.

        Expired leases count as due, so a crashed worker's deliveries come back by
        themselves.  On PostgreSQL concurrent workers skip each other's locked rows.
        """
        with self._relaxed_transaction() as conn:
            return self._claim(conn, now, limit, lease, owner)

    def _claim(self, conn: Connection, now: float, limit: int, lease: float,
               owner: str) -> list[Delivery]:
        rows = self._hot.claim_due.execute(
            conn, {"now": now, "limit": limit, "until": now + lease, "owner": owner})
        # The RETURNING list is Delivery's own field order (hot.CLAIMED_FIELDS).
        return [Delivery(*row) for row in rows]

    def record_and_claim(self, now: float, outcomes: Sequence[Outcome], limit: int,
                         lease: float, owner: str) -> tuple[list[Delivery], list[Outcome]]:
        """Record outcomes and lease up to ``limit`` due deliveries in one transaction.

        The scheduler's round trip to the store: one commit instead of two.  Returns the
        claimed deliveries and the outcomes not applied (their leases were lost).
        """
        with self._relaxed_transaction() as conn:
            stale = self._record(conn, now, outcomes)
            return (self._claim(conn, now, limit, lease, owner) if limit else []), stale

    def record_outcomes(self, now: float, outcomes: Sequence[Outcome]) -> list[Outcome]:
        """Store the results of delivery attempts; non-final ones leave an event.

        Returns the outcomes not applied: their deliveries are no longer in flight under
        the lease the outcome names.
        """
        with self._relaxed_transaction() as conn:
            return self._record(conn, now, outcomes)

    def _record(self, conn: Connection, now: float, outcomes: Sequence[Outcome]
                ) -> list[Outcome]:
        """Attempts' results; ``queued`` ones were handed back unattempted (a busy route):
        due again with the reason as last reply, no attempt counted and no event (the
        scheduler logs them once per round; a trace row per round would grow the table).

        Only the lease's holder writes (see ``hot.RECORD_OUTCOME``); the others are
        returned.  Finding them costs a look-up only when some were refused.
        """
        if not outcomes:
            return []
        queued = DeliveryStatus.QUEUED
        attempted = [o for o in outcomes if o.status is not queued]
        changed = 0
        if len(attempted) < len(outcomes):
            changed += self._hot.hand_back.execute_many(conn, [
                (o.due_at or now, o.reply[:1000], now, o.delivery_id, o.lease)
                for o in outcomes if o.status is queued])
        if attempted:
            changed += self._hot.record_outcome.execute_many(conn, [
                (o.status.value, o.due_at or now, o.reply[:1000], now, o.delivery_id, o.lease)
                for o in attempted
            ])
        stale = self._stale(conn, outcomes) if changed < len(outcomes) else []
        if stale:
            refused = {id(o) for o in stale}
            attempted = [o for o in attempted if id(o) not in refused]
        record_provider_ids(conn, [(o.delivery_id, o.provider_id)
                                   for o in attempted if o.provider_id])
        self._add_events(conn, [
            Event(o.status.value, o.reply[:1000], o.message_id or None, o.delivery_id)
            for o in attempted if o.status is not DeliveryStatus.DELIVERED
        ], now)
        # A 5xx reply to a list's copy counts against the member (bounce processing).
        reports = bounce_store.delivery_reports(conn, attempted)
        if reports:
            self._add_events(conn, bounce_store.count_bounces(conn, reports, now), now)
        return stale

    def _stale(self, conn: Connection, outcomes: Sequence[Outcome]) -> list[Outcome]:
        """The outcomes just refused: their row does not carry their lease and status.

        A row an outcome was applied to keeps the outcome's lease token and status; one
        refused has another token (a new claim), or is no longer in flight.  (An outcome
        written twice under one lease is written once and not reported: its row shows
        it applied.)
        """
        ids = sorted({o.delivery_id for o in outcomes})
        rows: dict[int, tuple[str | None, str]] = {}
        for start in range(0, len(ids), _IDS_PER_LOOKUP):
            rows.update((row.id, (row.lease_owner, row.status)) for row in conn.execute(
                _LEASES_BY_ID, {"b_ids": ids[start:start + _IDS_PER_LOOKUP]}))
        return [o for o in outcomes
                if rows.get(o.delivery_id) != (o.lease, o.status.value)]

    def apply_provider_feedback(self, now: float, provider_id: str,
                                feedback: Sequence[ProviderFeedback]) -> list[SentCopy]:
        """A provider's notification about the copy it calls ``provider_id``: each
        matching delivery gets an event, and those it fails are failed.  Returns the
        deliveries it concerns (none: not ours, or long purged)."""
        by_recipient = {f.recipient.lower(): f for f in feedback}
        with self.engines.writer.begin() as conn:
            # The database's lower() may fold fewer characters than Python's: a copy
            # it matched that Python's does not is left alone.
            matched = [(copy, found) for copy in sent_copies(conn, provider_id,
                                                             list(by_recipient))
                       if (found := by_recipient.get(copy.recipient.lower())) is not None]
            fail_delivered(conn, now, [(c, f) for c, f in matched if f.fails])
            self._add_events(conn, [Event(f.kind.value, f.detail[:1000], c.message_id,
                                          c.delivery_id) for c, f in matched], now)
        return [copy for copy, _ in matched]

    def list_address_sent_as(self, provider_ids: Sequence[str]) -> str | None:
        """The list or alias one of the provider's ids was sent for (a bounce mail's)."""
        with self.engines.reader.connect() as conn:
            return list_address_sent_as(conn, provider_ids)

    def renew_leases(self, now: float, until: float,
                     leases: Sequence[tuple[int, str]]) -> list[int]:
        """Extend the leases (delivery id, lease token) to ``until``, if still held.

        Returns the ids whose lease was lost (expired and claimed again, or the delivery
        is no longer in flight): their holder must not send them.
        """
        if not leases:
            return []
        with self._relaxed_transaction() as conn:
            changed = self._hot.renew_lease.execute_many(
                conn, [(until, delivery_id, token) for delivery_id, token in leases])
            if changed == len(leases):
                return []
            ids = sorted({delivery_id for delivery_id, _ in leases})
            held: set[tuple[int, str | None]] = set()
            for start in range(0, len(ids), _IDS_PER_LOOKUP):
                held.update((row.id, row.lease_owner) for row in conn.execute(
                    _LEASES_BY_ID, {"b_ids": ids[start:start + _IDS_PER_LOOKUP]})
                    if row.status == DeliveryStatus.IN_FLIGHT.value)
            return [delivery_id for delivery_id, token in leases
                    if (delivery_id, token) not in held]

    def release_leases(self, now: float, owner: str | None = None) -> int:
        """Return in-flight deliveries to the queue (all of them, or one owner's).

        An owner's lease tokens are ``owner/n`` (one per claim), or the owner itself.
        """
        stmt = update(deliveries).where(deliveries.c.status == DeliveryStatus.IN_FLIGHT.value)
        if owner is not None:
            column = deliveries.c.lease_owner
            stmt = stmt.where(or_(column == owner,
                                  column.startswith(f"{owner}/", autoescape=True)))
        with self.engines.writer.begin() as conn:
            released = int(conn.execute(stmt.values(
                status=DeliveryStatus.QUEUED.value, due_at=now, lease_owner=None,
                updated_at=now)).rowcount)
            if released and not self.engines.is_sqlite:  # another worker may take them
                notify_queued(conn)
            return released

    def next_due_at(self) -> float | None:
        with self.engines.reader.connect() as conn:
            due = conn.scalar(_NEXT_DUE)
        return None if due is None else float(due)

    def finish_messages(self, now: float, limit: int = 1000) -> int:
        """Mark queued messages whose deliveries are all final as done; release blobs."""
        pending = (select(deliveries.c.id)
                   .where(deliveries.c.message_id == messages.c.id,
                          deliveries.c.status.in_(UNFINISHED)).exists())
        with self.engines.writer.begin() as conn:
            ids = list(conn.scalars(
                select(messages.c.id)
                .where(messages.c.status == MessageStatus.QUEUED.value, ~pending)
                .limit(limit)))
            if ids:
                self._finish(conn, ids, now)
        return len(ids)

    def _finish(self, conn: Connection, ids: list[str], now: float) -> None:
        conn.execute(update(messages).where(messages.c.id.in_(ids))
                     .values(status=MessageStatus.DONE.value, updated_at=now))
        self._release_blobs(
            conn, list(conn.scalars(select(messages.c.blob).where(messages.c.id.in_(ids)))),
            now)

    def _release_blobs(self, conn: Connection, hashes: list[str], now: float) -> None:
        """Drop one reference per entry of ``hashes`` (a hash may repeat)."""
        per_blob: dict[str, int] = {}
        for blob in hashes:
            per_blob[blob] = per_blob.get(blob, 0) + 1
        conn.execute(
            update(blobs).where(blobs.c.hash == bindparam("b_hash"))
            .values(refcount=blobs.c.refcount - bindparam("b_n"), released_at=now),
            [{"b_hash": h, "b_n": n} for h, n in per_blob.items()],
        )

    def collect_blobs(self, released_before: float, unlink: Callable[[list[str]], None],
                      limit: int = 1000) -> int:
        """Delete unreferenced blobs released before the cutoff, rows and files together.

        The files are unlinked inside the transaction, while the rows are locked, so a
        concurrent ingest of the same content either sees the row gone and writes the
        file anew, or bumps the refcount first and the blob is kept.  Message rows and
        their trace may outlive the content (see :meth:`purge_messages`).
        """
        with self.engines.writer.begin() as conn:
            hashes = list(conn.scalars(
                select(blobs.c.hash)
                .where(blobs.c.refcount <= 0, blobs.c.released_at <= released_before)
                .limit(limit)))
            if hashes:
                # Re-check under the row lock: an ingest may have revived one meanwhile.
                hashes = list(conn.scalars(
                    delete(blobs).where(blobs.c.hash.in_(hashes), blobs.c.refcount <= 0)
                    .returning(blobs.c.hash)))
                unlink(hashes)
        return len(hashes)

    def known_blobs(self, digests: Sequence[str]) -> set[str]:
        """Which of ``digests`` have a row (referenced, or released and not collected)."""
        if not digests:
            return set()
        with self.engines.reader.connect() as conn:
            return set(conn.scalars(select(blobs.c.hash).where(blobs.c.hash.in_(digests))))

    def purge_messages(self, done_before: float, limit: int = 1000) -> int:
        """Forget done messages (their deliveries and events too) older than the cutoff,
        and events of no message as old; returns the rows of messages and of such events
        removed (``limit`` at most of each: one short write transaction)."""
        with self.engines.writer.begin() as conn:
            ids = list(conn.scalars(
                select(messages.c.id)
                .where(messages.c.status == MessageStatus.DONE.value,
                       messages.c.updated_at <= done_before)
                .limit(limit)))
            if ids:
                conn.execute(delete(events).where(events.c.message_id.in_(ids)))
                conn.execute(delete(deliveries).where(deliveries.c.message_id.in_(ids)))
                conn.execute(delete(messages).where(messages.c.id.in_(ids)))
            orphans = list(conn.scalars(
                select(events.c.id)
                .where(events.c.message_id.is_(None), events.c.created_at <= done_before)
                .limit(limit)))
            if orphans:
                conn.execute(delete(events).where(events.c.id.in_(orphans)))
        return len(ids) + len(orphans)

    def vacuum(self) -> bool:
        """SQLite: rewrite the file compactly and make it shrink after purges from now on
        (``auto_vacuum=INCREMENTAL``, which an existing database takes only with a
        VACUUM); False on PostgreSQL, whose autovacuum needs no help."""
        if not self.engines.is_sqlite:
            return False
        raw = self.engines.writer.raw_connection()
        try:
            driver = raw.driver_connection
            assert driver is not None
            driver.executescript("PRAGMA auto_vacuum=INCREMENTAL; VACUUM;")
        finally:
            raw.close()
        return True

    def reclaim_space(self, max_pages: int) -> int:
        """SQLite: give free pages back to the file system; returns how many.

        Purged rows leave free pages that new rows reuse, so under steady load the file
        stops growing by itself; after a peak, the file would keep its peak size.  With
        ``auto_vacuum=INCREMENTAL`` (every database created since that setting, see
        engine.py; ``mailflow vacuum`` converts an older one) this truncates the file
        while free pages are more than a quarter of it, down to a tenth, ``max_pages``
        per call so the writer is never held for long.  PostgreSQL's autovacuum does
        the same on its own: nothing to do there.
        """
        if not self.engines.is_sqlite:
            return 0
        raw = self.engines.writer.raw_connection()
        try:
            driver = raw.driver_connection
            assert driver is not None

            def pragma(name: str) -> int:
                return int(driver.execute(f"PRAGMA {name}").fetchone()[0])

            if pragma("auto_vacuum") != INCREMENTAL_VACUUM:
                return 0
            free, total = pragma("freelist_count"), pragma("page_count")
            if free < RECLAIM_MIN_PAGES or free * 4 < total:
                return 0
            # executescript steps the pragma to its end (a plain execute frees one page),
            # outside any transaction (this connection's BEGIN is the engine's own).
            driver.executescript(f"PRAGMA incremental_vacuum({min(max_pages, free - total // 10)})")
            return free - pragma("freelist_count")
        finally:
            raw.close()

    # -- inspection ---------------------------------------------------------------------

    def delivery_counts(self) -> dict[str, int]:
        return self._status_counts(deliveries.c.status, DeliveryStatus)

    def message_counts(self) -> dict[str, int]:
        return self._status_counts(messages.c.status, MessageStatus)

    def _status_counts(self, column: Any, statuses: Iterable[enum.StrEnum]) -> dict[str, int]:
        """Rows per status, with a zero for every status that has none."""
        with self.engines.reader.connect() as conn:
            rows = conn.execute(select(column, func.count()).group_by(column)).all()
        counts = {status.value: 0 for status in statuses}
        counts.update({status: n for status, n in rows})
        return counts

    def list_deliveries(self, limit: int, status: str | None = None) -> list[DeliveryRow]:
        """The newest deliveries (of one status), newest first."""
        return self.deliveries_page(limit, status=status)

    def deliveries_page(self, limit: int, before_id: int | None = None,
                        status: str | None = None) -> list[DeliveryRow]:
        """Deliveries newest first, those older than ``before_id`` (a cursor)."""
        query = (select(deliveries, lists.c.address.label("list_address"))
                 .outerjoin(lists, lists.c.id == deliveries.c.list_id)
                 .order_by(deliveries.c.id.desc()).limit(limit))
        if status:
            query = query.where(deliveries.c.status == status)
        if before_id is not None:
            query = query.where(deliveries.c.id < before_id)
        with self.engines.reader.connect() as conn:
            rows = conn.execute(query).all()
        return [DeliveryRow(id=r.id, message_id=r.message_id,
                            list_address=r.list_address or _role_address(r.list_id),
                            recipient=r.recipient, status=r.status, attempts=r.attempts,
                            due_at=r.due_at, created_at=r.created_at, updated_at=r.updated_at,
                            last_reply=r.last_reply)
                for r in rows]

    def message_events(self, message_id: str) -> list[tuple[float, str, str]]:
        """The trace of a message: its arrival (from the message row), then its events."""
        with self.engines.reader.connect() as conn:
            message = conn.execute(select(messages).where(messages.c.id == message_id)).first()
            rows = conn.execute(select(events.c.created_at, events.c.kind, events.c.detail)
                                .where(events.c.message_id == message_id)
                                .order_by(events.c.id)).all()
        trace = [(r.created_at, r.kind, r.detail) for r in rows]
        if message is not None:
            rcpts = message.rcpt_tos.replace("\n", ",")
            trace.insert(0, (message.received_at, "received",
                             f"from=<{message.mail_from}> size={message.size} "
                             f"peer={message.peer} rcpt={rcpts}"))
        return trace

    def stored_body(self, digest: str) -> bytes | None:
        """A body kept in its blob row, or None (a file, or no such blob)."""
        with self.engines.reader.connect() as conn:
            content = conn.scalar(select(blobs.c.content).where(blobs.c.hash == digest))
        return bytes(content) if content is not None else None

    def blob_stats(self) -> tuple[int, int]:
        """(number of blobs, bytes) currently stored."""
        with self.engines.reader.connect() as conn:
            row = conn.execute(select(func.count(), func.coalesce(func.sum(blobs.c.size), 0))
                               ).one()
        return int(row[0]), int(row[1])

    def _add_events(self, conn: Connection, items: Sequence[Event], now: float) -> None:
        if items:
            self._hot.insert_event.execute_many(conn, [
                (now, e.kind, e.message_id, e.delivery_id, e.detail) for e in items])


class WriteTransaction:
    """Small operations inside one open write transaction, for a service to drive.

    The ingest commit and the expansion are composed of these in ``mailflow.services``,
    which runs the processing chain in between; each is one statement or one batch of
    statements on the open connection, the hot ones straight on the driver.
    """

    # One module, one storage port: it uses the repository's private helpers.
    def __init__(self, repo: Repository, conn: Connection) -> None:
        self._repo = repo
        self._conn = conn
        self._hot = repo._hot
        self.directory = DirectoryView(conn, repo.roles, repo.verp)

    def upsert_blobs(self, batch: Sequence[InboundMessage], now: float,
                     bodies: Mapping[str, bytes]) -> None:
        """One reference per message to its blob; ``bodies`` go into the rows themselves.

        Once the rows are held (row locks on PostgreSQL, the database lock on SQLite),
        the garbage collector can no longer remove their files.
        """
        sizes: dict[str, tuple[int, int]] = {}
        for msg in batch:
            size, count = sizes.get(msg.blob, (msg.size, 0))
            sizes[msg.blob] = (size, count + 1)
        self._hot.upsert_blob.execute_many(self._conn, [
            (h, size, count, now, bodies.get(h)) for h, (size, count) in sorted(sizes.items())])

    def insert_messages(self, batch: Sequence[InboundMessage], now: float,
                        statuses: Mapping[str, MessageStatus]) -> None:
        """Message rows, ``received`` (or ``held``, as the accept chain decided)
        unless ``statuses`` says otherwise."""
        received, held = MessageStatus.RECEIVED, MessageStatus.HELD
        self._hot.insert_message.execute_many(self._conn, [
            (m.id, m.mail_from, "\n".join(m.rcpt_tos), m.blob, m.size, m.received_at,
             m.peer, m.helo, m.protocol,
             statuses.get(m.id, held if m.status is held else received).value, now,
             m.header_id)
            for m in batch])

    def insert_generated(self, generated: Sequence[GeneratedMessage], now: float) -> None:
        """Messages a processing step wrote: the body in its blob row, the row queued (the
        step planned its deliveries)."""
        if not generated:
            return
        self.upsert_blobs([g.message for g in generated], now,
                          {g.message.blob: g.content for g in generated if g.content})
        queued = MessageStatus.QUEUED
        self.insert_messages([g.message for g in generated], now,
                             {g.message.id: queued for g in generated})

    def log_replies(self, replied: Sequence[tuple[int, str]], now: float) -> None:
        """Note (list id, sender) pairs answered now, for the once-per-N-days rule."""
        for list_id, sender in dict.fromkeys(replied):
            values = {"list_id": list_id, "sender": sender, "replied_at": now}
            self._conn.execute(self._repo._upsert_insert(autoreply_log).values(**values)
                               .on_conflict_do_update(index_elements=["list_id", "sender"],
                                                      set_={"replied_at": now}))

    def take_received(self, limit: int) -> list[InboundMessage]:
        """The oldest messages waiting for expansion, locked against other expanders."""
        query = (select(messages).where(messages.c.status == MessageStatus.RECEIVED.value)
                 .order_by(messages.c.received_at).limit(limit))
        if not self._repo.engines.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        return [_message(row) for row in self._conn.execute(query)]

    def insert_deliveries(self, planned: Sequence[NewDelivery], now: float) -> None:
        """Deliveries due now; on PostgreSQL the commit wakes every listening worker."""
        if planned:
            status = DeliveryStatus.QUEUED.value
            self._hot.insert_delivery.execute_many(self._conn, [
                (d.message_id, d.list_id, d.recipient, status, d.priority, now, now, now)
                for d in planned])
            if not self._repo.engines.is_sqlite:
                notify_queued(self._conn)

    def lease_deliveries(self, planned: Sequence[NewDelivery], lease: Lease,
                         now: float) -> list[Delivery]:
        """Insert ``planned`` already leased to ``lease.owner``, exactly as a claim would."""
        if not planned:
            return []
        ids = self._repo._new_delivery_ids(self._conn, len(planned))
        until, status = now + lease.seconds, DeliveryStatus.IN_FLIGHT.value
        leased = [Delivery(id=id_, message_id=d.message_id, list_id=d.list_id,
                           recipient=d.recipient, attempts=0, created_at=now,
                           priority=d.priority, lease_owner=lease.owner, due_at=until)
                  for id_, d in zip(ids, planned, strict=True)]
        self._hot.insert_leased_delivery.execute_many(self._conn, [
            (d.id, d.message_id, d.list_id, d.recipient, status, d.priority, until,
             lease.owner, now, now) for d in leased])
        return leased

    def add_events(self, items: Sequence[Event], now: float) -> None:
        self._repo._add_events(self._conn, items, now)

    def mark_queued(self, ids: Sequence[str], now: float) -> None:
        if ids:
            self._conn.execute(update(messages).where(messages.c.id.in_(ids))
                               .values(status=MessageStatus.QUEUED.value, updated_at=now))

    def finish(self, ids: Sequence[str], now: float) -> None:
        """Mark messages done (nothing to deliver) and release their blobs."""
        if ids:
            self._repo._finish(self._conn, list(ids), now)

    def release_blobs(self, hashes: list[str], now: float) -> None:
        if hashes:
            self._repo._release_blobs(self._conn, hashes, now)

    def record_outcomes(self, outcomes: Sequence[Outcome], now: float) -> list[Outcome]:
        """The scheduler's outcomes; returns those not applied (their leases were lost)."""
        return self._repo._record(self._conn, now, outcomes)

    def apply_memberships(self, changes: Sequence[MembershipChange], answered: Sequence[str],
                          now: float) -> None:
        """What the list commands decided: roster changes, requests, replies counted."""
        if changes or answered:
            subscription_store.apply(self._conn, changes, answered, now)

    def take_request(self, request_id: int) -> SubscriptionRequest | None:
        """Remove a request to join, for an owner's decision (None: no such request)."""
        return subscription_store.take_request(self._conn, request_id)

    def expire_requests(self, now: float, limit: int) -> list[subscription_store.ExpiredRequest]:
        """Remove requests to join older than their list's ``hold_days`` (a bounded
        batch, oldest first), for the moderation sweep to tell the addresses."""
        return subscription_store.expire_requests(self._conn, now, limit, _list)

    def count_bounces(self, reports: Sequence[BounceReport], now: float) -> None:
        """Bounces the processing chain found, counted against their members."""
        if reports:
            self.add_events(bounce_store.count_bounces(self._conn, reports, now), now)

    def bounces_owed(self, now: float, policy: BouncePolicy,
                     limit: int) -> list[bounce_store.Owed]:
        """Members owed a score reset, a warning or their removal now."""
        return bounce_store.owed(self._conn, now, policy, limit, _list)

    def settle_bounces(self, done: Sequence[bounce_store.Owed], now: float) -> None:
        bounce_store.settle(self._conn, done, now)
