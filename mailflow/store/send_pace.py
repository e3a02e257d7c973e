"""A send rate shared by every relay of a store: a route's pace in one database row.

A per-process token bucket (``egress/token_bucket.py``) keeps one process within a
provider's rate; several workers each doing so would send at several times it.  Here the
bucket is a row of ``send_pace``: ``paid_until`` is the moment every send reserved so
far is paid for at the rate, when the bucket is full again (the "theoretical arrival
time" of GCRA); the bucket holds ``burst - (paid_until - now) * rate`` tokens.  A reservation is
one ``UPDATE … RETURNING`` (the row lock orders concurrent ones), with the same rules as
the process bucket: the caller waits out its share of the debt, and is refused (nothing
taken) when the others' debt alone is longer than ``max_wait``.  On PostgreSQL the time
is the database's (``clock_timestamp()``), so the workers' clocks need not agree.
"""

from __future__ import annotations

from sqlalchemy import text

from mailflow.store.engine import Engines, upsert_insert
from mailflow.store.tables import send_pace

_PG_CLOCK = "FROM (SELECT extract(epoch FROM clock_timestamp())::float8 AS now) AS clock"

# window: the burst's worth of seconds; cost: this reservation's.
_RESERVE = """
UPDATE send_pace
   SET paid_until = {greatest}(send_pace.paid_until, {now}) + :cost
  {clock}
 WHERE send_pace.route = :route AND send_pace.paid_until - {now} - :window <= :max_wait
RETURNING {greatest}(0.0, send_pace.paid_until - {now} - :window)
"""


def reserve_send(engines: Engines, route: str, count: float, rate: float, burst: float,
                 max_wait: float, now: float) -> float | None:
    """Reserve ``count`` sends of ``route`` at ``rate`` per second (``burst`` at once):
    the seconds to wait before sending them, or None (nothing reserved) when the debt
    of earlier reservations alone is longer than ``max_wait``.  ``now``: this process's
    clock, used on SQLite only (one process)."""
    sqlite = engines.is_sqlite
    # SQLite's RETURNING cannot name a FROM table: its time is the parameter itself.
    reserve = text(_RESERVE.format(greatest="max" if sqlite else "greatest",
                                   now=":now" if sqlite else "clock.now",
                                   clock="" if sqlite else _PG_CLOCK))
    values = {"route": route, "window": burst / rate, "cost": count / rate,
              "max_wait": max_wait, "now": now}
    if not sqlite:
        del values["now"]
    with engines.writer.begin() as conn:
        row = conn.execute(reserve, values).first()
        if row is None:  # too much debt already, or the route's first send ever
            # Concurrent first sends: one inserts, the others' inserts do nothing.
            conn.execute(upsert_insert(engines.dialect)(send_pace)
                         .values(route=route, paid_until=0.0).on_conflict_do_nothing())
            row = conn.execute(reserve, values).first()
    return None if row is None else float(row[0])
