"""Engines for the two supported backends, configured for durability and concurrency.

SQLite runs in WAL mode with ``synchronous=FULL`` so a commit is fsynced before an ingress
acknowledges; writes start with ``BEGIN IMMEDIATE`` so two writers never deadlock on a lock
upgrade.  PostgreSQL uses psycopg 3 whatever driver the URL names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool


@dataclass(frozen=True, slots=True)
class Engines:
    """A writer and a reader engine (the same object on PostgreSQL)."""

    writer: Engine
    reader: Engine
    dialect: str

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def dispose(self) -> None:
        self.writer.dispose()
        if self.reader is not self.writer:
            self.reader.dispose()


def upsert_insert(dialect: str) -> Callable[[Any], postgresql.Insert | sqlite.Insert]:
    """The INSERT of ``dialect`` (an engine's or a connection's ``dialect.name``), the one
    with ``ON CONFLICT``: both backends have it, SQLAlchemy's generic INSERT does not."""
    return sqlite.insert if dialect == "sqlite" else postgresql.insert


def normalize_url(url: str) -> str:
    """Map ``postgresql://`` and ``postgres://`` to the psycopg 3 driver."""
    for prefix in ("postgresql+psycopg2://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL (None for other backends or in-memory)."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite" or not parsed.database \
            or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def describe_database_error(url: str, error: BaseException) -> str | None:
    """One line saying what went wrong with the store and what to check, or None.

    None when ``error`` is not a database error.  The driver's own text is kept, but
    SQLAlchemy's background link and the driver's extra lines are dropped: an operator (or
    Postfix's log) gets one line that names the store.
    """
    from sqlalchemy.exc import OperationalError, SQLAlchemyError

    if not isinstance(error, SQLAlchemyError):
        return None
    cause = getattr(error, "orig", None) or error
    first = " ".join(str(cause).split("\n")[0].split()) or type(cause).__name__
    database = sqlite_path(url)
    if database is not None and "unable to open database file" in first:
        return (f"unable to open database file {database}: check that {database.parent} "
                "exists and that this user may read and write the file and its directory "
                "(SQLite writes -wal and -shm files beside it), or set MAILFLOW_DATA_DIR / "
                "MAILFLOW_DATABASE_URL")
    if database is not None and "readonly database" in first:
        return (f"{first} ({database}): check that this user may write the file and its "
                f"directory {database.parent}")
    if not isinstance(error, OperationalError):
        return first
    if database is None:
        shown = make_url(normalize_url(url)).render_as_string(hide_password=True)
        return f"{first} ({shown}): check that the database server runs and accepts this URL"
    return f"{first} ({database})"


def _sqlite_engine(url: str, *, begin: str, pool_size: int) -> Engine:
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        pool_size=pool_size,
        max_overflow=0,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        # Take transaction control from pysqlite so BEGIN is ours to issue.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # Takes effect only in a database without tables yet (a new one): its file can
        # then shrink after purges (Repository.reclaim_space).  A no-op otherwise.
        cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA cache_size=-32000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):  # type: ignore[no-untyped-def]
        # Straight on the driver: this runs for every transaction, the ingest's included.
        connection.connection.driver_connection.execute(begin)

    return engine


def create_engines(url: str, *, pool_size: int = 8) -> Engines:
    url = normalize_url(url)
    dialect = make_url(url).get_backend_name()
    if dialect == "sqlite":
        writer = _sqlite_engine(url, begin="BEGIN IMMEDIATE", pool_size=1)
        reader = _sqlite_engine(url, begin="BEGIN", pool_size=pool_size)
        return Engines(writer, reader, dialect)
    if dialect == "postgresql":
        engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size,
                               pool_pre_ping=True)
        return Engines(engine, engine, dialect)
    raise ValueError(f"unsupported database {dialect!r}: use sqlite:/// or postgresql://")


def create_cli_engines(url: str) -> Engines:
    """Short-lived engines for one CLI command: no pooled connections left behind."""
    url = normalize_url(url)
    if make_url(url).get_backend_name() == "postgresql":
        engine = create_engine(url, poolclass=NullPool)
        return Engines(engine, engine, "postgresql")
    return create_engines(url, pool_size=1)
