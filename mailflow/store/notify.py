"""PostgreSQL's LISTEN/NOTIFY for the send queue: the commit that makes deliveries due
says so, and idle workers on any host wake within milliseconds instead of at their next
poll.

The channel is per schema (``mailflow_queue_`` and the md5 of the schema's name, which
fits PostgreSQL's 63-byte identifiers whatever the schema), so relays on other schemas of
one database (tests, or two installations) never wake each other.  A notification
carries nothing: it says "look now", and the claim decides what to take, so a lost one
costs at most the fallback poll (``notify_poll_interval``).  Notifications are sent at
commit, and only then: a rolled-back transaction wakes nobody.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection
from sqlalchemy.engine import make_url

from mailflow.store.engine import normalize_url

if TYPE_CHECKING:  # psycopg is imported when a relay on PostgreSQL listens
    from psycopg import AsyncConnection

log = logging.getLogger(__name__)

CHANNEL_SQL = "'mailflow_queue_' || md5(current_schema())"
NOTIFY_SQL = f"SELECT pg_notify({CHANNEL_SQL}, '')"

CONNECT_TIMEOUT = 10  # seconds to connect to PostgreSQL for LISTEN
CHECK_EVERY = 30.0    # seconds without a notification before the connection is tested
CHECK_TIMEOUT = 10.0  # seconds the test may take before the connection is given up
RETRY_MIN, RETRY_MAX = 1.0, 30.0  # seconds between reconnects, doubling


def notify_queued(conn: Connection) -> None:
    """In a PostgreSQL transaction that makes deliveries due now: wake the workers."""
    conn.exec_driver_sql(NOTIFY_SQL)


def libpq_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as libpq takes it (its options, search_path included)."""
    return make_url(normalize_url(url)).set(drivername="postgresql").render_as_string(
        hide_password=False)


class QueueNotifications:
    """A dedicated connection that LISTENs on the queue's channel and calls ``on_notify``
    for each notification, and once after every (re)connect (what was sent while it was
    away is looked for then).  It reconnects after any failure, with a growing pause;
    ``listening`` says whether it is listening now (the scheduler polls more often when
    it is not)."""

    def __init__(self, url: str, on_notify: Callable[[], None]) -> None:
        self._url = libpq_url(url)
        self._on_notify = on_notify
        self.listening = False
        self.channel = ""
        self.backend_pid = 0  # the LISTEN connection's server process (for diagnostics)

    async def run(self) -> None:
        import psycopg

        pause = RETRY_MIN
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
            except (psycopg.Error, OSError) as exc:
                log.warning("cannot connect to PostgreSQL for LISTEN (polling every "
                            "poll_interval meanwhile): %s", str(exc).split("\n")[0],
                            extra={"action": "listen_error"})
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_MAX)
                continue
            try:
                await self._listen(conn)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                log.warning("LISTEN connection lost (polling every poll_interval until it "
                            "is back): %s", str(exc).split("\n")[0] or type(exc).__name__,
                            extra={"action": "listen_error"})
            finally:
                if self.listening:  # it worked for a while: try again soon
                    pause = RETRY_MIN
                self.listening = False
                await conn.close()
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_MAX)

    async def _listen(self, conn: AsyncConnection[Any]) -> None:
        from psycopg import sql

        async with asyncio.timeout(CHECK_TIMEOUT):
            cursor = await conn.execute(f"SELECT {CHANNEL_SQL}")
            row = await cursor.fetchone()
            assert row is not None
            self.channel = str(row[0])
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        self.listening = True
        self.backend_pid = conn.info.backend_pid
        log.info("listening for queued work on %s", self.channel,
                 extra={"action": "listening"})
        self._on_notify()
        while True:
            async for _ in conn.notifies(timeout=CHECK_EVERY):
                self._on_notify()
            # Every CHECK_EVERY seconds: is the connection still there?  (A peer that
            # vanished without a FIN would otherwise keep it "listening" for ever.)
            async with asyncio.timeout(CHECK_TIMEOUT):
                await conn.execute("SELECT 1")
