"""Bring a database to the newest schema with Alembic (idempotent).

Alembic is imported only when there is something to do: a relay whose database is
current (every start but the first after an upgrade) does not keep Alembic's modules in
memory for its whole life.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, text

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
# The newest revision under migrations/versions (a test checks it against Alembic's).
HEAD = "0021_scale"


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for a database Alembic never touched."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade_to_head(engine: Engine) -> None:
    if current_revision(engine) == HEAD:
        return
    upgrade(engine, "head")


def alembic_config() -> Config:
    """Alembic's configuration for this package's migrations (no ini file)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(engine: Engine, revision: str) -> None:
    """Bring the database to ``revision``: ``head``, or an older one where a test
    starts a database from before a migration, to upgrade it in place."""
    from alembic import command

    config = alembic_config()
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            # Relays started at once on a new database (split roles on several hosts):
            # one migrates, the others wait for it and then find nothing to do.
            connection.execute(text(
                "SELECT pg_advisory_xact_lock(hashtext('mailflow_migrate_' "
                "|| current_schema()))"))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.commit()
