"""Roster changes from list commands, requests to join, and the bound on command replies,
on an open connection.

The repository's part for subscriptions (issue 12, part 3), kept apart from its other
operations: what the list commands step (``pipeline/process/commands.py``) decided is
written here in the message's own transaction, and the web pages and the ``mailflow
requests`` commands write the same way in theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Connection, Row, bindparam, delete, exists, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from mailflow.model import (
    MailingList,
    MemberRole,
    MembershipAction,
    MembershipChange,
    MemberStatus,
    SubscriptionRequest,
)
from mailflow.store.tables import command_replies, lists, members, subscription_requests

DAY: Final = 86_400.0
WINDOW: Final = DAY  # command replies are counted per address and day

_MEMBER = select(members.c.id, members.c.status).where(
    members.c.list_id == bindparam("b_list_id"), members.c.address == bindparam("b_address"))
_STAFF = (select(members.c.address)
          .where(members.c.list_id == bindparam("b_list_id"),
                 members.c.status == MemberStatus.ACTIVE.value,
                 members.c.role.in_(bindparam("b_roles", expanding=True)))
          .order_by(members.c.id))
_REPLIES = select(command_replies.c.count).where(
    command_replies.c.address == bindparam("b_address"),
    command_replies.c.window_start > bindparam("b_since"))


def is_member(conn: Connection, list_id: int, address: str) -> bool:
    """Whether ``address`` is on the list's roster: a disabled member is one (it leaves,
    or is re-enabled, never joins twice); one unsubscribed by a complaint is not."""
    row = conn.execute(_MEMBER, {"b_list_id": list_id, "b_address": address}).first()
    return row is not None and row.status != MemberStatus.UNSUBSCRIBED.value


def staff(conn: Connection, list_id: int, roles: Sequence[MemberRole]) -> list[str]:
    """The active members of the list with one of ``roles``."""
    return list(conn.scalars(_STAFF, {"b_list_id": list_id,
                                      "b_roles": [r.value for r in roles]}))


def replies_today(conn: Connection, address: str, now: float) -> int:
    """How many command replies ``address`` got in its current window."""
    return int(conn.scalar(_REPLIES, {"b_address": address, "b_since": now - WINDOW}) or 0)


def apply(conn: Connection, changes: Sequence[MembershipChange], answered: Sequence[str],
          now: float) -> None:
    """Write roster changes and requests, and count the replies sent to ``answered``.

    A join of an address already on the roster and a leave of one that is not change
    nothing (a second confirmation of one token finds the work done); a request that
    exists already is not made twice.
    """
    for change in changes:
        key = {"b_list_id": change.list_id, "b_address": change.address}
        if change.action is MembershipAction.LEAVE:
            conn.execute(delete(members).where(members.c.list_id == change.list_id,
                                               members.c.address == change.address))
            continue
        if change.action is MembershipAction.JOIN:
            row = conn.execute(_MEMBER, key).first()
            if row is None:
                conn.execute(insert(members).values(
                    list_id=change.list_id, address=change.address,
                    status=MemberStatus.ACTIVE.value, created_at=now,
                    role=MemberRole.MEMBER.value))
            elif row.status == MemberStatus.UNSUBSCRIBED.value:  # back, by its own choice
                conn.execute(update(members).where(members.c.id == row.id).values(
                    status=MemberStatus.ACTIVE.value, bounce_score=0.0, disabled_at=None,
                    warnings_sent=0))
            conn.execute(delete(subscription_requests).where(
                subscription_requests.c.list_id == change.list_id,
                subscription_requests.c.address == change.address))
            continue
        known = conn.scalar(select(subscription_requests.c.id).where(
            subscription_requests.c.list_id == change.list_id,
            subscription_requests.c.address == change.address))
        if known is None:
            conn.execute(insert(subscription_requests).values(
                list_id=change.list_id, address=change.address, created_at=now))
    if answered:
        _count_replies(conn, answered, now)


def _count_replies(conn: Connection, answered: Sequence[str], now: float) -> None:
    """One more reply per address (a new window when the last is over); the rows of
    windows over are deleted, so the table holds at most a day of senders."""
    upsert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)
    counts: dict[str, int] = {}
    for address in answered:
        counts[address] = counts.get(address, 0) + 1
    conn.execute(delete(command_replies).where(command_replies.c.window_start <= now - WINDOW))
    for address, count in counts.items():
        stmt: Any = upsert(command_replies).values(address=address, window_start=now,
                                                   count=count)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=["address"],
            set_={"count": command_replies.c.count + count}))


def requests(conn: Connection, list_id: int | None) -> list[SubscriptionRequest]:
    """The requests waiting, oldest first (of one list, or of all)."""
    query = (select(subscription_requests, lists.c.address.label("list_address"))
             .join(lists, lists.c.id == subscription_requests.c.list_id)
             .order_by(subscription_requests.c.id))
    if list_id is not None:
        query = query.where(subscription_requests.c.list_id == list_id)
    return [SubscriptionRequest(r.id, r.list_id, r.list_address, r.address, r.created_at)
            for r in conn.execute(query)]


def take_request(conn: Connection, request_id: int) -> SubscriptionRequest | None:
    """Remove a request and return it (None: no such request, or decided already)."""
    row = conn.execute(select(subscription_requests, lists.c.address.label("list_address"))
                       .join(lists, lists.c.id == subscription_requests.c.list_id)
                       .where(subscription_requests.c.id == request_id)).first()
    if row is None:
        return None
    conn.execute(delete(subscription_requests).where(subscription_requests.c.id == request_id))
    return SubscriptionRequest(row.id, row.list_id, row.list_address, row.address,
                               row.created_at)


@dataclass(frozen=True, slots=True)
class ExpiredRequest:
    """A request removed unanswered; ``member``: the address is on the roster anyway (an
    owner added it directly), so there is nobody to tell that the request was lost."""

    request: SubscriptionRequest
    mailing_list: MailingList
    member: bool


def expire_requests(conn: Connection, now: float, limit: int,
                    to_list: Callable[[Row[Any]], MailingList]) -> list[ExpiredRequest]:
    """Remove up to ``limit`` requests older than their list's ``hold_days``, oldest
    first, and return them.

    One read and one delete for the batch.  The delete returns what it removed, so a
    request an owner decided between the two is neither expired nor announced as such.
    """
    on_roster = exists().where(
        members.c.list_id == subscription_requests.c.list_id,
        members.c.address == subscription_requests.c.address,
        members.c.status != MemberStatus.UNSUBSCRIBED.value)
    due = conn.execute(
        select(subscription_requests.c.id.label("request_id"),
               subscription_requests.c.address.label("request_address"),
               subscription_requests.c.created_at.label("requested_at"),
               on_roster.label("on_roster"), *lists.c)
        .join(lists, lists.c.id == subscription_requests.c.list_id)
        .where(subscription_requests.c.created_at <= now - lists.c.hold_days * DAY)
        .order_by(subscription_requests.c.created_at, subscription_requests.c.id)
        .limit(limit)).all()
    if not due:
        return []
    removed = set(conn.scalars(
        delete(subscription_requests)
        .where(subscription_requests.c.id.in_([row.request_id for row in due]))
        .returning(subscription_requests.c.id)))
    return [ExpiredRequest(SubscriptionRequest(row.request_id, row.id, row.address,
                                               row.request_address, row.requested_at),
                           to_list(row), bool(row.on_roster))
            for row in due if row.request_id in removed]
