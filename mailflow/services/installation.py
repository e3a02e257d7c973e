"""This installation: its data directory, its schema and its instance id.

Shared by ``mailflow init``, the relay and ``mailflow pipe``, which must all agree on the
instance id (it is in every loop marker the relay writes).
"""

from __future__ import annotations

import secrets

from mailflow.config import Settings
from mailflow.store import Repository, create_engines, upgrade_to_head

INSTANCE_KEY = "instance_id"


def instance_id(settings: Settings, repo: Repository) -> str:
    """This installation's id, used in loop markers: set in settings or made at init."""
    stored = repo.ensure_meta(INSTANCE_KEY, settings.instance_id or secrets.token_hex(6))
    return settings.instance_id or stored


def initialise(settings: Settings) -> str:
    """Create the data directory and bring the schema up to date; returns the instance id."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.blob_dir.mkdir(parents=True, exist_ok=True)
    engines = create_engines(settings.resolved_database_url, pool_size=1)
    try:
        upgrade_to_head(engines.writer)
        return instance_id(settings, Repository(engines))
    finally:
        engines.dispose()
