"""The hot statements, written once and run straight on the driver's cursor.

Why: for the statements that touch every delivery (insert at expansion, lease at claim,
outcome at record) and every ingest (blob reference, message row, trace event),
SQLAlchemy's per-row parameter processing and ``Row`` objects cost more than SQLite's own
work (profiles in bench/RESULTS.md).  Here the SQL is plain text with ``:name``
placeholders, turned into the driver's positional style (``?`` for sqlite3, ``%s`` for
psycopg) once, and rows travel as tuples.  Everything else stays SQLAlchemy Core.

Rows that come back are not read by position anywhere else: the claim's ``RETURNING``
list is generated from :class:`~mailflow.model.Delivery`'s own fields (see
:data:`CLAIMED_FIELDS`), so ``Delivery(*row)`` is right by construction and a new column
is one new field there.  Positional construction is kept because building by keyword
or from a mapping costs measurably more per row on the claim path.

Each statement runs inside the caller's SQLAlchemy transaction, on its connection.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Connection

from mailflow.model import Delivery, DeliveryStatus
from mailflow.store.tables import PENDING_SQL, deliveries

_PLACEHOLDER = re.compile(r"(?<!:):([a-z_]+)")


@dataclass(frozen=True, slots=True)
class DriverStatement:
    sql: str
    names: tuple[str, ...]  # the placeholders in order (a name may repeat)

    @classmethod
    def prepare(cls, text: str, paramstyle: str) -> DriverStatement:
        marker = "?" if paramstyle == "qmark" else "%s"
        return cls(_PLACEHOLDER.sub(marker, text), tuple(_PLACEHOLDER.findall(text)))

    def bind(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(values[name] for name in self.names)

    def execute(self, conn: Connection, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run once; the rows it returns (RETURNING), as tuples."""
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(self.sql, self.bind(values))
            return cursor.fetchall() if cursor.description else []
        finally:
            cursor.close()

    def execute_many(self, conn: Connection, rows: Iterable[Sequence[Any]]) -> int:
        """Run once per row; each row gives the placeholders' values in order.

        Returns the rows changed, summed over all runs (both drivers sum them).
        """
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(self.sql, rows)
            return int(cursor.rowcount)
        finally:
            cursor.close()


UPSERT_BLOB = """
INSERT INTO blobs (hash, size, refcount, created_at, released_at, content)
VALUES (:hash, :size, :refcount, :now, NULL, :content)
ON CONFLICT (hash) DO UPDATE SET refcount = blobs.refcount + excluded.refcount,
                                 released_at = NULL,
                                 content = coalesce(blobs.content, excluded.content)
"""

INSERT_MESSAGE = """
INSERT INTO messages (id, mail_from, rcpt_tos, blob, size, received_at, peer, helo, protocol,
                      status, updated_at, header_id)
VALUES (:id, :mail_from, :rcpt_tos, :blob, :size, :received_at, :peer, :helo, :protocol,
        :status, :now, :header_id)
"""

INSERT_DELIVERY = """
INSERT INTO deliveries (message_id, list_id, recipient, status, priority, attempts, due_at,
                        created_at, updated_at)
VALUES (:message_id, :list_id, :recipient, :status, :priority, 0, :now, :now, :now)
"""

INSERT_LEASED_DELIVERY = """
INSERT INTO deliveries (id, message_id, list_id, recipient, status, priority, attempts, due_at,
                        lease_owner, created_at, updated_at)
VALUES (:id, :message_id, :list_id, :recipient, :status, :priority, 0, :until, :owner, :now,
        :now)
"""

INSERT_EVENT = """
INSERT INTO events (created_at, kind, message_id, delivery_id, detail)
VALUES (:now, :kind, :message_id, :delivery_id, :detail)
"""

# The holder's lease only: a delivery whose lease ran out and was claimed again (by
# another relay, or by this one under a new token) belongs to its new holder.  The token
# stays on the row, so a caller told that fewer rows changed than it sent can see which
# outcomes were applied (``Repository._stale``).
_HELD = f"id = :id AND lease_owner = :lease AND status = '{DeliveryStatus.IN_FLIGHT.value}'"

RECORD_OUTCOME = f"""
UPDATE deliveries
   SET status = :status, due_at = :due_at, last_reply = :reply, attempts = attempts + 1,
       updated_at = :now
 WHERE {_HELD}
"""

# Claimed but not attempted (a busy route handed it back): due again, with the reason as
# its last reply, and no attempt counted.
HAND_BACK = f"""
UPDATE deliveries
   SET status = '{DeliveryStatus.QUEUED.value}', due_at = :due_at, last_reply = :reply,
       updated_at = :now
 WHERE {_HELD}
"""

# A transaction still on the wire (or waiting for a sender) keeps its leases.
RENEW_LEASE = f"""
UPDATE deliveries SET due_at = :until WHERE {_HELD}
"""


def _claimed_fields() -> tuple[str, ...]:
    """Delivery's fields up to ``status``, the ones a claimed row fills, in their order.

    The claim sets ``status`` itself (in flight, the dataclass default); the fields after
    it belong to the sender.  Each of these fields must be a column of ``deliveries``.
    """
    names: list[str] = []
    for field in fields(Delivery):
        if field.name == "status":
            break
        names.append(field.name)
    unknown = [name for name in names if name not in deliveries.c]
    if unknown:
        raise RuntimeError(f"Delivery fields {unknown} are not columns of deliveries")
    return tuple(names)


#: What a claim returns, in :class:`Delivery`'s positional order.
CLAIMED_FIELDS = _claimed_fields()

CLAIM_DUE = f"""
UPDATE deliveries
   SET status = '{DeliveryStatus.IN_FLIGHT.value}', due_at = :until, lease_owner = :owner,
       updated_at = :now
 WHERE id IN (SELECT id FROM deliveries
               WHERE {PENDING_SQL} AND due_at <= :now
               ORDER BY priority DESC, due_at
               LIMIT :limit {{lock}})
RETURNING {", ".join(CLAIMED_FIELDS)}
"""


@dataclass(frozen=True, slots=True)
class HotStatements:
    upsert_blob: DriverStatement
    insert_message: DriverStatement
    insert_delivery: DriverStatement
    insert_leased_delivery: DriverStatement
    insert_event: DriverStatement
    record_outcome: DriverStatement
    hand_back: DriverStatement
    renew_lease: DriverStatement
    claim_due: DriverStatement

    @classmethod
    def for_dialect(cls, dialect: str, paramstyle: str) -> HotStatements:
        # Concurrent claimers on PostgreSQL skip each other's rows instead of waiting;
        # SQLite has one writer, so there is nothing to skip.
        lock = "FOR UPDATE SKIP LOCKED" if dialect == "postgresql" else ""
        return cls(
            DriverStatement.prepare(UPSERT_BLOB, paramstyle),
            DriverStatement.prepare(INSERT_MESSAGE, paramstyle),
            DriverStatement.prepare(INSERT_DELIVERY, paramstyle),
            DriverStatement.prepare(INSERT_LEASED_DELIVERY, paramstyle),
            DriverStatement.prepare(INSERT_EVENT, paramstyle),
            DriverStatement.prepare(RECORD_OUTCOME, paramstyle),
            DriverStatement.prepare(HAND_BACK, paramstyle),
            DriverStatement.prepare(RENEW_LEASE, paramstyle),
            DriverStatement.prepare(CLAIM_DUE.format(lock=lock), paramstyle),
        )
