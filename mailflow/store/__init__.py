"""Persistence: tables, migrations, the repository (storage port) and its async runner."""

from mailflow.store.engine import Engines, create_cli_engines, create_engines
from mailflow.store.migrate import upgrade_to_head
from mailflow.store.repository import Repository
from mailflow.store.runner import StoreRunner

__all__ = [
    "Engines",
    "Repository",
    "StoreRunner",
    "create_cli_engines",
    "create_engines",
    "upgrade_to_head",
]
