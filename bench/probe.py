"""Cheap read-only queries on the relay's SQLite store while it runs.

Polling must not steal the CPU the relay is being measured on, so the frequent checks
use indexes only: ``max(id)`` of deliveries (how many rows were created; ids are dense
in a fresh store) and whether any pending row is left (the partial index
``ix_deliveries_due`` covers exactly the pending statuses).  The full per-status counts
(:meth:`mailflow.store.Repository.delivery_counts`) are taken once a second and at the
end, through the repository.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

# Must match the partial index's WHERE clause (mailflow/store/tables.py, PENDING_SQL) word
# for word, or SQLite will not use that index and each poll scans the whole table.
PENDING_SQL = "status IN ('queued', 'in_flight', 'deferred')"


class StoreProbe:
    def __init__(self, db_path: Path) -> None:
        self.conn = sqlite3.connect(str(db_path), timeout=10, isolation_level=None,
                                    check_same_thread=False)
        self.conn.execute("PRAGMA query_only=ON")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> StoreProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def created(self) -> int:
        """Delivery rows created so far (``max(id)``: an index lookup, not a count)."""
        return int(self.conn.execute("SELECT coalesce(max(id), 0) FROM deliveries")
                   .fetchone()[0])

    def any_pending(self) -> bool:
        return bool(self.conn.execute(
            f"SELECT EXISTS (SELECT 1 FROM deliveries WHERE {PENDING_SQL})").fetchone()[0])

    def message_progress(self, message_id: str) -> tuple[int, int, int, float | None]:
        """(deliveries, delivered, pending, latest updated_at) of one message."""
        row = self.conn.execute(
            "SELECT count(*), coalesce(sum(status = 'delivered'), 0), "
            f"coalesce(sum({PENDING_SQL}), 0), max(updated_at) "
            "FROM deliveries WHERE message_id = ?", (message_id,)).fetchone()
        return int(row[0]), int(row[1]), int(row[2]), row[3]

    def delivered_span(self) -> tuple[float | None, float | None]:
        """(earliest, latest) ``updated_at`` of delivered rows: when outcomes were recorded."""
        row = self.conn.execute("SELECT min(updated_at), max(updated_at) FROM deliveries "
                                "WHERE status = 'delivered'").fetchone()
        return row[0], row[1]

    def sample_replies(self, limit: int = 3) -> list[str]:
        """A few distinct last replies of deliveries that are not delivered (for errors)."""
        rows = self.conn.execute(
            "SELECT status, last_reply, count(*) FROM deliveries WHERE status != 'delivered' "
            "AND last_reply IS NOT NULL GROUP BY status, last_reply ORDER BY count(*) DESC "
            "LIMIT ?", (limit,)).fetchall()
        return [f"{n} x {status}: {reply}" for status, reply, n in rows]

    def query_plan(self, sql: str) -> str:
        return "; ".join(str(r[-1]) for r in self.conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
