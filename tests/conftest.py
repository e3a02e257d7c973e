"""Shared fixtures: storage backends, an SMTP sink, and relays in child processes.

PostgreSQL tests use a schema of their own in database ``test`` on 127.0.0.1:5432 and drop
it afterwards.  Without PostgreSQL they skip, unless MAILFLOW_TEST_REQUIRE_SERVICES=1
(as in CI), where a missing service fails the run.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine, text

from mailflow.store import Engines, Repository, create_engines, upgrade_to_head
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink

if TYPE_CHECKING:
    from playwright.sync_api import Browser

    from mailflow.testing.aws import MotoServer, SnsSigner

PG_ADMIN_URL = os.environ.get("MAILFLOW_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRE_SERVICES = os.environ.get("MAILFLOW_TEST_REQUIRE_SERVICES") == "1"


def _postgres_problem() -> str | None:
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except Exception as exc:  # any failure means: not usable here
        return f"PostgreSQL at {PG_ADMIN_URL} unavailable: {type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def postgres_available() -> None:
    problem = _postgres_problem()
    if problem is None:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"{problem} (MAILFLOW_TEST_REQUIRE_SERVICES=1)")
    pytest.skip(problem)


@contextmanager
def _fresh_schema() -> Iterator[str]:
    """A URL whose connections use a new schema of database ``test``, dropped afterwards."""
    schema = f"mf_test_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def postgres_url(postgres_available: None) -> Iterator[str]:
    """A URL whose connections use a fresh schema, dropped after the test."""
    with _fresh_schema() as url:
        yield url


@pytest.fixture
def other_postgres_url(postgres_available: None) -> Iterator[str]:
    """A second fresh schema, for tests that show two schemas never meet."""
    with _fresh_schema() as url:
        yield url


@pytest.fixture(scope="module")
def module_postgres_url(postgres_available: None) -> Iterator[str]:
    """A fresh schema for the processes a module's tests share (one store)."""
    with _fresh_schema() as url:
        yield url


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="module", params=BACKENDS)
def module_databases(request: pytest.FixtureRequest) -> Iterator[Callable[[], str]]:
    """For the relays a module's tests share: makes one database per relay on this
    module's backend (a PostgreSQL schema, dropped after the module; on SQLite a
    relay keeps its store in its own folder)."""
    if request.param == "sqlite":
        yield lambda: "sqlite:"
        return
    request.getfixturevalue("postgres_available")
    with ExitStack() as schemas:
        yield lambda: schemas.enter_context(_fresh_schema())


@pytest.fixture
def engines(database_url: str) -> Iterator[Engines]:
    engines = create_engines(database_url, pool_size=4)
    upgrade_to_head(engines.writer)
    yield engines
    engines.dispose()


@pytest.fixture
def repo(engines: Engines) -> Repository:
    return Repository(engines)


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


FAST_RETRIES = {
    "MAILFLOW_EGRESS": "smtp",
    "MAILFLOW_RETRY_INITIAL_DELAY": "0.2",
    "MAILFLOW_RETRY_MULTIPLIER": "2",
    "MAILFLOW_RETRY_MAX_DELAY": "1",
    "MAILFLOW_MAINTENANCE_INTERVAL": "0.5",
    "MAILFLOW_BLOB_RETENTION": "0",
    "MAILFLOW_SMTP_TIMEOUT": "10",
}


@contextmanager
def relay_factory(folder: Path, database_url: Callable[[], str], sink: SmtpSink
                  ) -> Iterator[Callable[..., RelayProcess]]:
    """Build (not start) relays that send to ``sink``, each on the database
    ``database_url()`` names (SQLite: the relay's own folder); stop them afterwards."""
    made: list[RelayProcess] = []

    def factory(lmtp: bool = False, policy: bool = False, **settings: str) -> RelayProcess:
        env = {**FAST_RETRIES, "MAILFLOW_SMTP_RELAY": sink.url}
        env.update({f"MAILFLOW_{k.upper()}": v for k, v in settings.items()})
        url = database_url()
        url = "" if url.startswith("sqlite") else url
        relay = RelayProcess(folder / f"relay{len(made)}", database_url=url, settings=env,
                             lmtp=lmtp, policy=policy)
        made.append(relay)
        relay.init()
        return relay

    try:
        yield factory
    finally:
        for relay in made:
            relay.stop()


@pytest.fixture
def make_relay(tmp_path: Path, database_url: str, sink: SmtpSink
               ) -> Iterator[Callable[..., RelayProcess]]:
    """Build (not start) a relay on this test's backend that sends to the sink."""
    with relay_factory(tmp_path, lambda: database_url, sink) as factory:
        yield factory


@pytest.fixture(scope="module")
def module_sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


@pytest.fixture(scope="module")
def make_module_relay(tmp_path_factory: pytest.TempPathFactory,
                      module_databases: Callable[[], str],
                      module_sink: SmtpSink) -> Iterator[Callable[..., RelayProcess]]:
    """``make_relay`` for relays shared by a module's tests, each with a store of its own.

    Only for tests that no other can see: each posts to a list of its own
    (:meth:`RelayProcess.fresh_list`) and looks only at its members' copies, or only
    gets refusals.  A test that needs settings or a fault of its own, stops or kills
    the relay, or trips a limiter, gets a relay of its own.
    """
    with relay_factory(tmp_path_factory.mktemp("relays"), module_databases,
                       module_sink) as factory:
        yield factory


@pytest.fixture
def relay(make_relay: Callable[..., RelayProcess]) -> Iterator[RelayProcess]:
    running = make_relay().start()
    yield running
    running.stop()


# -- AWS (moto in server mode) -------------------------------------------------------------

@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    """moto's server on loopback for a module's tests (AWS APIs over real HTTP)."""
    from mailflow.testing.aws import MotoServer  # moto and boto3: only where used

    with MotoServer() as running:
        yield running


@pytest.fixture(scope="module")
def signer() -> Iterator[SnsSigner]:
    """Signs SNS messages with a key whose certificate a loopback server serves."""
    from mailflow.testing.aws import SnsSigner

    with SnsSigner() as running:
        yield running


# -- the web UI (Playwright driving Debian's Chromium) -------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """A headless Chromium (/usr/bin/chromium) for a module's UI tests (per module: the
    sync API's event loop must not outlive them into async tests); they skip
    without it, unless MAILFLOW_TEST_REQUIRE_SERVICES=1 (as in CI), where they fail."""
    from mailflow.testing.browser import chromium_problem, launch

    problem = chromium_problem()
    if problem is not None:
        if REQUIRE_SERVICES:
            pytest.fail(f"{problem} (MAILFLOW_TEST_REQUIRE_SERVICES=1)")
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        running = launch(playwright)
        yield running
        running.close()
