"""Bounce scores, bounce events and suppressions on an open connection.

The repository's part for bounce processing, kept apart from its other operations:
counting :class:`~mailflow.model.BounceReport` (from the processing chain and from
5xx delivery outcomes) with the rules of :mod:`mailflow.bounce_score`, and the
periodic pass's reading and writing of what members are owed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, and_, bindparam, delete, exists, insert, or_, select, update

from mailflow import bounce_score
from mailflow.bounce_score import BouncePolicy, BounceState, Due
from mailflow.model import (
    BounceKind,
    BounceReport,
    BounceSource,
    DeliveryStatus,
    Event,
    ListKind,
    MailingList,
    MemberStatus,
    Outcome,
)
from mailflow.store.engine import upsert_insert
from mailflow.store.tables import bounce_events, deliveries, lists, members, suppressions

_MEMBER_STATE = (select(members, lists.c.bounce_threshold, lists.c.address.label("list_address"))
                 .join(lists, lists.c.id == members.c.list_id)
                 .where(members.c.list_id == bindparam("b_list_id"),
                        members.c.address == bindparam("b_address")))


def state_of(row: Row[Any]) -> BounceState:
    return BounceState(MemberStatus(row.status), row.bounce_score, row.last_bounce_at,
                       row.disabled_at, row.warnings_sent, row.last_warning_at)


def _write_state(conn: Connection, member_id: int, state: BounceState) -> None:
    conn.execute(update(members).where(members.c.id == member_id).values(
        status=state.status.value, bounce_score=state.score,
        last_bounce_at=state.last_bounce_at, disabled_at=state.disabled_at,
        warnings_sent=state.warnings_sent, last_warning_at=state.last_warning_at))


def suppress(conn: Connection, address: str, target: str, reason: str, now: float) -> bool:
    """Add a suppression unless it exists; whether it was added.  One statement, so
    two writers adding the same entry at once cannot both pass a check and then have
    one fail on the unique constraint."""
    added = conn.execute(upsert_insert(conn.dialect.name)(suppressions).values(
        address=address, target=target, reason=reason[:200], created_at=now
    ).on_conflict_do_nothing(index_elements=["address", "target"])
        .returning(suppressions.c.id)).first()
    return added is not None


def count_bounces(conn: Connection, reports: Sequence[BounceReport], now: float) -> list[Event]:
    """Count each report against its member; returns the events to log (disabled,
    unsubscribed).  The bounces themselves are written in one statement at the end."""
    events: list[Event] = []
    logged: list[dict[str, Any]] = []
    for report in reports:
        row = conn.execute(_MEMBER_STATE, {"b_list_id": report.list_id,
                                           "b_address": report.address}).first()
        counted = False
        if row is not None:
            state = state_of(row)
            if report.kind is BounceKind.COMPLAINT:
                counted = state.status is not MemberStatus.UNSUBSCRIBED
                _write_state(conn, row.id, BounceState(MemberStatus.UNSUBSCRIBED, state.score,
                                                       state.last_bounce_at))
                suppress(conn, report.address, row.list_address, "complaint (ARF)", now)
                events.append(Event("unsubscribed", f"<{report.address}> from "
                                    f"{row.list_address}: a complaint, suppressed"))
            else:
                new, counted = bounce_score.after_bounce(state, report.kind, now,
                                                         row.bounce_threshold)
                if counted:
                    _write_state(conn, row.id, new)
                if new.status is MemberStatus.DISABLED and state.status is MemberStatus.ACTIVE:
                    events.append(Event("disabled", f"<{report.address}> on "
                                        f"{row.list_address}: bounce score {new.score:g}"))
        logged.append({"list_id": report.list_id, "address": report.address,
                       "kind": report.kind.value, "source": report.source.value,
                       "counted": counted, "detail": report.detail[:1000],
                       "created_at": now})
    if logged:
        conn.execute(insert(bounce_events), logged)
    return events


_FAILED_LIST_DELIVERIES = (
    select(deliveries.c.id, deliveries.c.list_id, deliveries.c.recipient)
    .join(lists, lists.c.id == deliveries.c.list_id)
    .where(deliveries.c.id.in_(bindparam("b_ids", expanding=True)),
           lists.c.kind == ListKind.LIST.value))


def delivery_reports(conn: Connection, outcomes: Sequence[Outcome]) -> list[BounceReport]:
    """The 5xx failures among applied ``outcomes`` of lists' deliveries, as reports."""
    failed = {o.delivery_id: o.reply for o in outcomes
              if o.status is DeliveryStatus.FAILED and o.reply[:1] == "5"}
    if not failed:
        return []
    rows = conn.execute(_FAILED_LIST_DELIVERIES, {"b_ids": sorted(failed)}).all()
    return [BounceReport(row.list_id, row.recipient, BounceKind.PERMANENT,
                         BounceSource.DELIVERY, failed[row.id]) for row in rows]


@dataclass(frozen=True, slots=True)
class Owed:
    """A member the periodic pass owes something (see :func:`bounce_score.due`)."""

    member_id: int
    mailing_list: MailingList
    address: str
    state: BounceState
    action: Due


def owed(conn: Connection, now: float, policy: BouncePolicy, limit: int,
         to_list: Any) -> list[Owed]:
    """Members owed a reset, a warning or their removal now (at most ``limit``)."""
    stale = and_(members.c.status == MemberStatus.ACTIVE.value, members.c.bounce_score > 0,
                 members.c.last_bounce_at <= now - policy.stale_after)
    disabled = and_(members.c.status == MemberStatus.DISABLED.value,
                    members.c.disabled_at.is_not(None),
                    or_(members.c.last_warning_at.is_(None),
                        members.c.last_warning_at <= now - policy.warning_interval))
    query = (select(members.c.id.label("member_id"), members.c.address.label("member_address"),
                    members.c.status, members.c.bounce_score, members.c.last_bounce_at,
                    members.c.disabled_at, members.c.warnings_sent, members.c.last_warning_at,
                    *lists.c)
             .join(lists, lists.c.id == members.c.list_id)
             .where(or_(stale, disabled)).order_by(members.c.id).limit(limit))
    found = []
    for row in conn.execute(query):
        state = state_of(row)
        action = bounce_score.due(state, now, policy)
        if action is not Due.NOTHING:
            found.append(Owed(row.member_id, to_list(row), row.member_address, state, action))
    return found


def settle(conn: Connection, done: Sequence[Owed], now: float) -> None:
    """Write what the periodic pass did: scores reset, warnings counted, members removed."""
    for item in done:
        if item.action is Due.REMOVE:
            conn.execute(delete(members).where(members.c.id == item.member_id))
        else:
            _write_state(conn, item.member_id, bounce_score.after(item.state, item.action, now))


def not_suppressed(list_id: Any) -> Any:
    """A condition on ``members`` rows: no suppression covers the member's address for
    every list or for the list ``list_id`` (a bind parameter or a column)."""
    list_address = select(lists.c.address).where(lists.c.id == list_id).scalar_subquery()
    return ~exists().where(suppressions.c.address == members.c.address,
                           or_(suppressions.c.target == "",
                               suppressions.c.target == list_address))
