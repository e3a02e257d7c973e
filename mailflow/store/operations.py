"""Storage operations for operators: message trace, queue actions, gauges.

Apart from the repository because none of it is on the mail path: the statements here
are read (or run) when an operator asks, or when Prometheus scrapes, never per message.
Time ranges are turned into ranges of queue ids (which begin with the arrival time,
``mailflow.ids``), so the primary key and ``ix_deliveries_message`` bound every scan.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    Select,
    and_,
    cast,
    func,
    literal,
    or_,
    select,
    text,
    update,
)

from mailflow.model import (
    DeliveryRow,
    DeliveryStatus,
    Event,
    InboundMessage,
    MessageStatus,
    MessageTrace,
    QueueChange,
    QueueSelection,
    TraceStep,
    role_alias_by_id,
)
from mailflow.store.engine import Engines
from mailflow.store.notify import notify_queued
from mailflow.store.repository import PENDING, _message
from mailflow.store.tables import PENDING_SQL, deliveries, events, lists, messages

IDS_PER_STATEMENT = 500  # ids in one IN list of an action
GAUGE_ROW_LIMIT = 100_000  # pending rows counted at most per scrape (the rest: ">=")


def id_bound(moment: float) -> str:
    """The smallest queue id of a message received at ``moment`` (see ``ids.py``)."""
    return f"{int(moment * 1000):011x}"


def _in_range(column: Any, since: float | None, until: float | None) -> list[Any]:
    clauses = []
    if since is not None:
        clauses.append(column >= id_bound(since))
    if until is not None:
        clauses.append(column < id_bound(until) + "g")  # after every id of that millisecond
    return clauses


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _delivery_row(r: Any) -> DeliveryRow:
    address = r.list_address
    if address is None and (role := role_alias_by_id(r.list_id)) is not None:
        address = role.address
    return DeliveryRow(id=r.id, message_id=r.message_id, list_address=address,
                       recipient=r.recipient, status=r.status, attempts=r.attempts,
                       due_at=r.due_at, created_at=r.created_at, updated_at=r.updated_at,
                       last_reply=r.last_reply)


# The due index's own condition, as literal SQL: SQLite uses a partial index only for a
# query whose WHERE implies the index's, which bound parameters never do.
_PENDING = text(PENDING_SQL)
_OLDEST_DUE = select(func.min(deliveries.c.due_at)).where(_PENDING)

_DELIVERIES_WITH_LIST = (select(deliveries, lists.c.address.label("list_address"))
                         .outerjoin(lists, lists.c.id == deliveries.c.list_id))


class OperationsStore:
    """Trace look-ups, queue actions and gauge figures on one store."""

    def __init__(self, engines: Engines) -> None:
        self.engines = engines

    # -- trace --------------------------------------------------------------------------

    def find_messages(self, query: str, since: float | None, until: float | None,
                      limit: int) -> list[str]:
        """Queue ids of the messages ``query`` names, newest first: a queue id, a
        Message-ID (with or without its angle brackets), or an address that sent the
        message, was an envelope recipient of it, or one of its deliveries went to."""
        query = query.strip()
        bare = query.strip("<>")
        ranged = _in_range(messages.c.id, since, until)
        matches: list[Any] = [messages.c.id == query,
                              messages.c.header_id.in_([query, f"<{bare}>", bare])]
        if "@" in bare:
            address = bare.lower()
            pattern = f"%\n{_escape_like(address)}\n%"
            recipients = (select(deliveries.c.message_id)
                          .where(func.lower(deliveries.c.recipient) == address,
                                 *_in_range(deliveries.c.message_id, since, until)))
            matches += [func.lower(messages.c.mail_from) == address,
                        (literal("\n") + func.lower(messages.c.rcpt_tos) + literal("\n"))
                        .like(pattern, escape="\\"),
                        messages.c.id.in_(recipients)]
        stmt = (select(messages.c.id).where(or_(*matches), *ranged)
                .order_by(messages.c.id.desc()).limit(limit))
        with self.engines.reader.connect() as conn:
            return list(conn.scalars(stmt))

    def traces(self, ids: Sequence[str]) -> list[MessageTrace]:
        """The timeline of each message in ``ids`` (in that order; unknown ids skipped):
        its arrival, its events (expansion, accept-chain decisions, every attempt that
        did not deliver, with the reply) and each delivery's present state; a delivered
        one adds its final attempt (the reply is on its row: the hot path writes no
        event for a success)."""
        if not ids:
            return []
        with self.engines.reader.connect() as conn:
            found = {r.id: _message(r) for r in conn.execute(
                select(messages).where(messages.c.id.in_(ids)))}
            rows = [_delivery_row(r) for r in conn.execute(
                _DELIVERIES_WITH_LIST.where(deliveries.c.message_id.in_(ids))
                .order_by(deliveries.c.id))]
            logged = conn.execute(
                select(events.c.created_at, events.c.kind, events.c.detail,
                       events.c.message_id, events.c.delivery_id)
                .where(events.c.message_id.in_(ids)).order_by(events.c.id)).all()
        recipients = {r.id: r.recipient for r in rows}
        traces = []
        for message_id in ids:
            message = found.get(message_id)
            if message is None:
                continue
            steps = [_received(message)]
            steps += [TraceStep(e.created_at, e.kind, e.detail,
                                recipients.get(e.delivery_id) if e.delivery_id else None,
                                e.delivery_id)
                      for e in logged if e.message_id == message_id]
            mine = tuple(r for r in rows if r.message_id == message_id)
            steps += [TraceStep(r.updated_at, "delivered", r.last_reply or "", r.recipient,
                                r.id) for r in mine if r.status == DeliveryStatus.DELIVERED]
            steps.sort(key=lambda s: s.at)  # stable: same-time steps keep their order
            traces.append(MessageTrace(message, tuple(steps), mine))
        return traces

    # -- queue --------------------------------------------------------------------------

    def _selected(self, selection: QueueSelection) -> Select[Any]:
        where: list[Any] = []
        if selection.statuses:
            where.append(deliveries.c.status.in_([s.value for s in selection.statuses]))
        if selection.list_address is not None:
            where.append(deliveries.c.list_id.in_(
                select(lists.c.id).where(lists.c.address == selection.list_address)))
        if selection.domain is not None:
            where.append(func.lower(deliveries.c.recipient).like(
                f"%@{_escape_like(selection.domain.lower())}", escape="\\"))
        if selection.created_before is not None:
            where.append(deliveries.c.created_at <= selection.created_before)
        if selection.ids or selection.queue_ids:
            where.append(or_(deliveries.c.id.in_(selection.ids),
                             deliveries.c.message_id.in_(selection.queue_ids)))
        return _DELIVERIES_WITH_LIST.where(and_(*where)) if where else _DELIVERIES_WITH_LIST

    def select_deliveries(self, selection: QueueSelection, limit: int) -> list[DeliveryRow]:
        """The deliveries ``selection`` names, newest first, at most ``limit``."""
        stmt = self._selected(selection).order_by(deliveries.c.id.desc()).limit(limit)
        with self.engines.reader.connect() as conn:
            return [_delivery_row(r) for r in conn.execute(stmt)]

    def count_selected(self, selection: QueueSelection) -> int:
        stmt = select(func.count()).select_from(self._selected(selection).subquery())
        with self.engines.reader.connect() as conn:
            return int(conn.scalar(stmt) or 0)

    def change_deliveries(self, selection: QueueSelection, sources: Iterable[DeliveryStatus],
                          now: float, kind: str, **values: Any) -> QueueChange:
        """Set ``values`` on the selected deliveries whose status is one of ``sources``,
        in batches; one ``kind`` event per message changed (the trace shows it).

        Safe against senders: the update re-checks the status row by row, so a delivery
        claimed meanwhile (in flight under a lease) is left alone, and a sender's
        outcome applies only under its lease (``hot.RECORD_OUTCOME``).
        """
        allowed = [s.value for s in sources]
        picked = self._selected(selection).subquery()
        with self.engines.reader.connect() as conn:
            matched = [(r.id, r.message_id) for r in conn.execute(
                select(picked.c.id, picked.c.message_id).order_by(picked.c.id))]
        total = 0
        for start in range(0, len(matched), IDS_PER_STATEMENT):
            chunk = matched[start:start + IDS_PER_STATEMENT]
            with self.engines.writer.begin() as conn:
                done = conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id.in_([i for i, _ in chunk]),
                           deliveries.c.status.in_(allowed))
                    .values(updated_at=now, **values)
                    .returning(deliveries.c.message_id)).scalars().all()
                per_message: dict[str, int] = {}
                for message_id in done:
                    per_message[message_id] = per_message.get(message_id, 0) + 1
                _add_events(conn, [Event(kind, f"{n} deliveries, by an operator", m)
                                   for m, n in per_message.items()], now)
                if done and "due_at" in values and not self.engines.is_sqlite:
                    notify_queued(conn)  # due now: the workers look at once
            total += len(done)
        return QueueChange(total, len(matched) - total)

    # -- statistics --------------------------------------------------------------------

    def hourly_counts(self, since: float, oldest_message: float, hours: int
                      ) -> list[tuple[int, int, int]]:
        """Per hour from ``since`` (``hours`` of them): messages received, deliveries
        delivered and failed (by when their outcome was recorded).

        Both scans are bounded by queue id (the primary key and ``ix_deliveries_message``):
        messages from ``since``, deliveries of messages received after ``oldest_message``
        (a delivery is finished within ``max_delivery_age`` of its message's arrival).
        """
        received = [0] * hours
        delivered = [0] * hours
        failed = [0] * hours
        bucket_of_message = func.floor((messages.c.received_at - since) / 3600)
        bucket_of_delivery = func.floor((deliveries.c.updated_at - since) / 3600)
        with self.engines.reader.connect() as conn:
            for bucket, n in conn.execute(
                    select(bucket_of_message, func.count())
                    .where(messages.c.id >= id_bound(since), messages.c.received_at >= since)
                    .group_by(bucket_of_message)):
                if 0 <= int(bucket) < hours:
                    received[int(bucket)] += int(n)
            for bucket, status, n in conn.execute(
                    select(bucket_of_delivery, deliveries.c.status, func.count())
                    .where(deliveries.c.message_id >= id_bound(oldest_message),
                           deliveries.c.status.in_([DeliveryStatus.DELIVERED.value,
                                                    DeliveryStatus.FAILED.value]),
                           deliveries.c.updated_at >= since)
                    .group_by(bucket_of_delivery, deliveries.c.status)):
                if 0 <= int(bucket) < hours:
                    target = delivered if status == DeliveryStatus.DELIVERED.value else failed
                    target[int(bucket)] += int(n)
        return list(zip(received, delivered, failed, strict=True))

    # -- dashboard ----------------------------------------------------------------------

    def hourly_outcomes(self, since: float, hours: int) -> dict[str, list[int]]:
        """Deliveries that became final (delivered, failed) in each of ``hours`` hours
        from ``since``, by status: one grouped read (a dashboard's, not the mail path's,
        so it may scan the deliveries of the last day)."""
        offset = (deliveries.c.updated_at - since) / 3600
        # floor() for PostgreSQL (its cast rounds); SQLite's cast truncates (all >= 0).
        hour = func.floor(offset) if self.engines.dialect == "postgresql" else offset
        bucket = cast(hour, Integer).label("hour")
        final = (DeliveryStatus.DELIVERED.value, DeliveryStatus.FAILED.value)
        query = (select(bucket, deliveries.c.status, func.count())
                 .where(deliveries.c.updated_at >= since,
                        deliveries.c.updated_at < since + hours * 3600,
                        deliveries.c.status.in_(final))
                 .group_by(bucket, deliveries.c.status))
        counts = {status: [0] * hours for status in final}
        with self.engines.reader.connect() as conn:
            for index, status, n in conn.execute(query):
                if 0 <= index < hours:
                    counts[status][index] += int(n)
        return counts

    def recent_failures(self, limit: int) -> list[DeliveryRow]:
        """The deliveries that failed last, newest first."""
        query = (_DELIVERIES_WITH_LIST
                 .where(deliveries.c.status == DeliveryStatus.FAILED.value)
                 .order_by(deliveries.c.updated_at.desc()).limit(limit))
        with self.engines.reader.connect() as conn:
            return [_delivery_row(r) for r in conn.execute(query)]

    # -- gauges and health ---------------------------------------------------------------

    def ping(self) -> None:
        """A round trip to the database (readiness)."""
        with self.engines.reader.connect() as conn:
            conn.execute(select(literal(1)))

    def pending_counts(self) -> dict[str, int]:
        """Claimable deliveries by status, counting at most :data:`GAUGE_ROW_LIMIT` rows
        (through the due index), so a scrape costs the same whatever the backlog."""
        capped = (select(deliveries.c.status).where(_PENDING)
                  .limit(GAUGE_ROW_LIMIT).subquery())
        with self.engines.reader.connect() as conn:
            rows = conn.execute(select(capped.c.status, func.count())
                                .group_by(capped.c.status)).all()
        counts = dict.fromkeys(PENDING, 0)
        counts.update({status: int(n) for status, n in rows})
        return counts

    def oldest_due(self) -> float | None:
        """The earliest due time of a claimable delivery (or lease expiry), through the
        due index."""
        with self.engines.reader.connect() as conn:
            due = conn.scalar(_OLDEST_DUE)
        return None if due is None else float(due)


def _received(message: InboundMessage) -> TraceStep:
    rcpts = ",".join(message.rcpt_tos)
    held = " (held)" if message.status is MessageStatus.HELD else ""
    detail = (f"from=<{message.mail_from}> via {message.protocol} peer={message.peer or '-'} "
              f"helo={message.helo or '-'} size={message.size} "
              f"message-id={message.header_id or '-'} rcpt={rcpts}{held}")
    return TraceStep(message.received_at, "received", detail)


def _add_events(conn: Connection, items: Sequence[Event], now: float) -> None:
    if items:
        conn.execute(events.insert(), [
            {"created_at": now, "kind": e.kind, "message_id": e.message_id,
             "delivery_id": e.delivery_id, "detail": e.detail} for e in items])

