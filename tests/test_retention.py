"""Retention (issue 15, part 7): finished mail is forgotten in short batches, and a
SQLite file gives the space back, on both backends where they differ."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, insert, select

from mailflow.cli import cli
from mailflow.model import DeliveryStatus, MessageStatus
from mailflow.store import Repository, create_engines
from mailflow.store.migrate import upgrade_to_head
from mailflow.store.tables import deliveries, events, messages

NOW = 1_800_000_000.0
DAY = 86_400.0


def add_messages(repo: Repository, count: int, *, status: MessageStatus, at: float,
                 prefix: str, padding: int = 0) -> None:
    """``count`` messages with one delivery and one event each, last changed ``at``."""
    final = (DeliveryStatus.DELIVERED if status is MessageStatus.DONE
             else DeliveryStatus.QUEUED).value
    with repo.engines.writer.begin() as conn:
        conn.execute(insert(messages), [
            {"id": f"{prefix}{i}", "mail_from": "a@x.test", "rcpt_tos": "b@y.test",
             "blob": "0" * 64, "size": 10, "received_at": at, "status": status.value,
             "updated_at": at} for i in range(count)])
        conn.execute(insert(deliveries), [
            {"message_id": f"{prefix}{i}", "list_id": 1, "recipient": "b@y.test",
             "status": final, "due_at": at, "created_at": at, "updated_at": at,
             "last_reply": "250 2.0.0 ok " + "x" * padding} for i in range(count)])
        conn.execute(insert(events), [
            {"created_at": at, "kind": "delivered", "message_id": f"{prefix}{i}",
             "detail": "250 ok"} for i in range(count)])


def count(repo: Repository, table: object) -> int:
    with repo.engines.reader.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_purge_forgets_only_finished_mail_older_than_the_cutoff_in_batches(
        repo: Repository) -> None:
    add_messages(repo, 25, status=MessageStatus.DONE, at=NOW - 8 * DAY, prefix="old")
    add_messages(repo, 5, status=MessageStatus.DONE, at=NOW - DAY, prefix="new")
    add_messages(repo, 5, status=MessageStatus.QUEUED, at=NOW - 30 * DAY, prefix="wait")
    with repo.engines.writer.begin() as conn:  # an outcome that named no message
        conn.execute(insert(events), [{"created_at": NOW - 8 * DAY, "kind": "failed",
                                       "message_id": None, "detail": "x"}])
    cutoff = NOW - 7 * DAY
    removed = []
    for _ in range(10):  # bounded: 10 rows at most per call
        done = repo.purge_messages(cutoff, limit=10)
        if not done:
            break
        removed.append(done)
    assert removed == [11, 10, 5]  # the orphan event goes with the first batch
    assert count(repo, messages) == 10
    assert count(repo, deliveries) == 10
    assert count(repo, events) == 10
    with repo.engines.reader.connect() as conn:
        kept = set(conn.scalars(select(messages.c.id)))
    assert kept == {f"new{i}" for i in range(5)} | {f"wait{i}" for i in range(5)}


def test_a_new_sqlite_store_shrinks_after_a_purge(tmp_path: Path) -> None:
    path = tmp_path / "mailflow.db"
    engines = create_engines(f"sqlite:///{path}")
    try:
        upgrade_to_head(engines.writer)
        repo = Repository(engines)
        add_messages(repo, 4000, status=MessageStatus.DONE, at=NOW - 8 * DAY, prefix="m",
                     padding=2000)
        grown = _checkpointed_size(path)
        while repo.purge_messages(NOW - 7 * DAY):
            pass
        assert _checkpointed_size(path) > grown * 0.9  # freed pages stay in the file...
        freed = repo.reclaim_space(max_pages=1_000_000)
        assert freed > 0
        assert _checkpointed_size(path) < grown / 3  # ...until they are given back
        assert repo.reclaim_space(max_pages=1_000_000) == 0  # nothing left worth it
    finally:
        engines.dispose()


def test_an_older_store_is_converted_by_mailflow_vacuum(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    path = tmp_path / "mailflow.db"
    with sqlite3.connect(path) as old:  # as a store created before auto_vacuum was set
        old.execute("CREATE TABLE unrelated (x)")
    engines = create_engines(f"sqlite:///{path}")
    try:
        upgrade_to_head(engines.writer)
        repo = Repository(engines)
        add_messages(repo, 2000, status=MessageStatus.DONE, at=NOW - 8 * DAY, prefix="m",
                     padding=2000)
        while repo.purge_messages(NOW - 7 * DAY):
            pass
        assert repo.reclaim_space(max_pages=1_000_000) == 0  # cannot: no auto_vacuum
        grown = _checkpointed_size(path)
    finally:
        engines.dispose()
    monkeypatch.setenv("MAILFLOW_DATABASE_URL", f"sqlite:///{path}")
    result = CliRunner().invoke(cli, ["vacuum"])
    assert result.exit_code == 0, result.stderr
    assert "it now shrinks after purges" in result.stdout
    assert path.stat().st_size < grown / 3
    with sqlite3.connect(path) as converted:
        assert converted.execute("PRAGMA auto_vacuum").fetchone()[0] == 2


@pytest.mark.postgres
def test_vacuum_on_postgresql_says_there_is_nothing_to_do(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engines = create_engines(postgres_url)
    try:
        upgrade_to_head(engines.writer)
        assert Repository(engines).reclaim_space(10) == 0
    finally:
        engines.dispose()
    monkeypatch.setenv("MAILFLOW_DATABASE_URL", postgres_url)
    result = CliRunner().invoke(cli, ["vacuum"])
    assert result.exit_code == 0, result.stderr
    assert "autovacuum" in result.stdout


def _checkpointed_size(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size
