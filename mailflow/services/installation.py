"""This installation: its data directory, its schema and its instance id.

Shared by ``mailflow init``, the relay and ``mailflow pipe``, which must all agree on the
instance id (it is in every loop marker the relay writes).
"""

from __future__ import annotations

import secrets

from mailflow.config import Settings
from mailflow.confirm_tokens import ConfirmTokens
from mailflow.errors import ConfigurationError
from mailflow.pipeline.process.commands import ListCommands
from mailflow.srs import Srs
from mailflow.store import Repository, create_engines, upgrade_to_head
from mailflow.store.engine import create_cli_engines, normalize_url, sqlite_path
from mailflow.store.migrate import current_revision
from mailflow.unsubscribe_tokens import UnsubscribeTokens

INSTANCE_KEY = "instance_id"
SRS_KEY = "srs_secret"
UNSUBSCRIBE_KEY = "unsubscribe_secret"


def instance_id(settings: Settings, repo: Repository) -> str:
    """This installation's id, used in loop markers: set in settings or made at init."""
    stored = repo.ensure_meta(INSTANCE_KEY, settings.instance_id or secrets.token_hex(6))
    return settings.instance_id or stored


def srs_codec(settings: Settings, repo: Repository) -> Srs:
    """The SRS codec: ``srs_secret`` if set, else the one made at init and kept in the
    store, so every process of the installation (and every relay on a shared
    PostgreSQL store) signs and checks with the same secret."""
    stored = repo.ensure_meta(SRS_KEY, secrets.token_urlsafe(24))
    current = settings.srs_secret.get_secret_value() or stored
    old = [s.get_secret_value() for s in settings.srs_old_secrets]
    if settings.srs_secret.get_secret_value():
        old.append(stored)  # the generated one keeps checking the bounces it signed
    return Srs(current, tuple(s for s in old if s and s != current), settings.srs_max_age_days)


def unsubscribe_tokens(settings: Settings, repo: Repository) -> UnsubscribeTokens:
    """The one-click unsubscribe tokens: ``unsubscribe_secret`` if set, else the one made
    at init and kept in the store (every relay sharing the store checks the same links);
    with the setting, links made under the stored secret keep working."""
    stored = repo.ensure_meta(UNSUBSCRIBE_KEY, secrets.token_urlsafe(24))
    current = settings.unsubscribe_secret.get_secret_value() or stored
    return UnsubscribeTokens(current, () if current == stored else (stored,))


def list_commands(settings: Settings, unsubscribe: UnsubscribeTokens) -> ListCommands:
    """The list commands step: its confirmation tokens are signed with a key derived
    from the unsubscribe secret (its old secrets still verify)."""
    tokens = ConfirmTokens(unsubscribe.secret, tuple(unsubscribe.old_secrets),
                           settings.subscription_confirm_days * 86_400.0)
    return ListCommands(tokens, settings.public_url, settings.list_command_replies_per_day)


def initialise(settings: Settings) -> str:
    """Create the data directory and bring the schema up to date; returns the instance id."""
    return prepare(settings)[0]


def prepare(settings: Settings) -> tuple[str, Srs, UnsubscribeTokens]:
    """:func:`initialise`, returning the SRS codec and the unsubscribe tokens too (the
    relay needs all three)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.blob_dir.mkdir(parents=True, exist_ok=True)
    engines = create_engines(settings.resolved_database_url, pool_size=1)
    try:
        upgrade_to_head(engines.writer)
        repo = Repository(engines)
        return (instance_id(settings, repo), srs_codec(settings, repo),
                unsubscribe_tokens(settings, repo))
    finally:
        engines.dispose()


def require_store(settings: Settings) -> None:
    """Refuse to go on when there is no initialised store where the settings point.

    A relay started on a wrong data directory would otherwise create an empty store and
    refuse every recipient, so senders' mail bounces.  Checked without creating anything:
    a SQLite file is looked at before it is opened, and "no store" on PostgreSQL means
    Alembic's version table is missing.
    """
    url = settings.resolved_database_url
    database = sqlite_path(url)
    if database is not None:
        where = str(database)
        if not database.is_file():
            raise _no_store(where)
    else:
        from sqlalchemy.engine import make_url

        where = make_url(normalize_url(url)).render_as_string(hide_password=True)
    engines = create_cli_engines(url)
    try:
        revision = current_revision(engines.writer)
    finally:
        engines.dispose()
    if revision is None:
        raise _no_store(where)


def _no_store(where: str) -> ConfigurationError:
    return ConfigurationError(
        f"no relay store at {where}; run `mailflow init` first (or `mailflow serve --init`), "
        "or set MAILFLOW_DATA_DIR / MAILFLOW_DATABASE_URL to the existing store")
