"""Scale-out pieces without relay processes (issue 15, part 2): what the split roles
refuse, PostgreSQL's per-schema queue wake-ups, and a send rate shared through the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mailflow.config import Settings
from mailflow.errors import ConfigurationError
from mailflow.store import Engines, create_engines, upgrade_to_head
from mailflow.store.notify import QueueNotifications, notify_queued
from mailflow.store.send_pace import reserve_send
from mailflow.testing.relay import RelayProcess

PG = "postgresql://postgres@127.0.0.1:5432/test"


# -- roles ------------------------------------------------------------------------------

def test_split_roles_refuse_sqlite_and_an_unshared_blob_folder(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).role == "all"
    with pytest.raises(ValueError, match="role worker runs beside other relay processes"):
        Settings(data_dir=tmp_path, role="worker")
    with pytest.raises(ValueError, match="role ingress needs a blob store every node"):
        Settings(data_dir=tmp_path, role="ingress", database_url=PG)
    shared = Settings(data_dir=tmp_path, role="ingress", database_url=PG, shared_blobs=True)
    assert (shared.takes_mail, shared.sends_mail, shared.serves_web) == (True, False, False)
    worker = Settings(data_dir=tmp_path, role="worker", database_url=PG,
                      blob_url="s3://bodies/mail")
    assert (worker.takes_mail, worker.sends_mail, worker.serves_web) == (False, True, False)
    with pytest.raises(ValueError, match="Input should be 'all', 'ingress'"):
        Settings(data_dir=tmp_path, role="sender")


def test_serve_role_on_sqlite_is_a_clear_error(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "relay")
    relay.init()
    result = relay.cli("serve", "--role", "worker")
    assert result.returncode != 0
    assert "role worker runs beside other relay processes" in result.stderr
    assert "needs PostgreSQL" in result.stderr or "PostgreSQL" in result.stderr


# -- LISTEN/NOTIFY ------------------------------------------------------------------------

def _commit_notify(url: str, *, rollback: bool = False) -> None:
    engines = create_engines(url)
    try:
        with engines.writer.connect() as conn:
            transaction = conn.begin()
            notify_queued(conn)
            if rollback:
                transaction.rollback()
            else:
                transaction.commit()
    finally:
        engines.dispose()


async def _heard(url: str, notify: Callable[[], None]) -> int:
    """How many wake-ups a listener on ``url`` hears while ``notify`` runs (beyond the
    one every (re)connect gives)."""
    heard = asyncio.Event()
    count = 0

    def woken() -> None:
        nonlocal count
        count += 1
        heard.set()

    listener = QueueNotifications(url, woken)
    task = asyncio.create_task(listener.run())
    try:
        async with asyncio.timeout(5):
            await heard.wait()  # listening: the first call after connecting
        assert listener.listening and listener.channel.startswith("mailflow_queue_")
        heard.clear()
        notify()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await heard.wait()
        await asyncio.sleep(0.2)  # a second notification, if any, would be here by now
        return count - 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_notify_wakes_listeners_of_its_own_schema_only(
        postgres_url: str, other_postgres_url: str) -> None:
    assert asyncio.run(_heard(postgres_url, lambda: _commit_notify(postgres_url))) == 1
    assert asyncio.run(_heard(postgres_url, lambda: _commit_notify(other_postgres_url))) == 0


def test_a_listener_whose_connection_is_killed_reconnects_and_hears_again(
        postgres_url: str) -> None:
    from sqlalchemy import text

    async def check() -> None:
        calls: list[int] = []
        woken = asyncio.Event()

        def wake() -> None:
            calls.append(listener.backend_pid)
            woken.set()

        listener = QueueNotifications(postgres_url, wake)
        task = asyncio.create_task(listener.run())
        try:
            async with asyncio.timeout(5):
                await woken.wait()
            first = listener.backend_pid
            engines = create_engines(postgres_url)
            with engines.writer.begin() as conn:
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
            engines.dispose()
            async with asyncio.timeout(10):  # back after RETRY_MIN, on a new backend
                while listener.backend_pid in (0, first) or not listener.listening:
                    woken.clear()
                    await woken.wait()
            woken.clear()
            before = len(calls)
            _commit_notify(postgres_url)
            async with asyncio.timeout(5):
                await woken.wait()
            assert len(calls) == before + 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(check())


def test_a_notify_in_a_rolled_back_transaction_wakes_nobody(postgres_url: str) -> None:
    assert asyncio.run(_heard(postgres_url, lambda: _commit_notify(
        postgres_url, rollback=True))) == 0


# -- a send rate shared through the store --------------------------------------------------

def _pace_engines(database_url: str) -> Engines:
    engines = create_engines(database_url)
    upgrade_to_head(engines.writer)
    return engines


def test_two_senders_taking_from_one_pace_keep_its_rate(database_url: str) -> None:
    """Each thread has engines of its own, as two relays would: together they send at
    the rate, not at twice it (two process buckets would)."""
    rate, sends = 40.0, 30  # per thread: 60 sends at 40/s, about 1.5 s
    _pace_engines(database_url).dispose()
    sent: list[float] = []
    lock = threading.Lock()
    problems: list[BaseException] = []

    def sender() -> None:
        engines = create_engines(database_url)
        try:
            for _ in range(sends):
                wait = reserve_send(engines, "ses", 1, rate, 1.0, 60.0, time.time())
                assert wait is not None
                time.sleep(wait)
                with lock:
                    sent.append(time.monotonic())
        except BaseException as exc:  # reported by the test's thread
            problems.append(exc)
        finally:
            engines.dispose()

    threads = [threading.Thread(target=sender) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not problems, problems
    sent.sort()
    assert len(sent) == 2 * sends
    window = 0.5
    busiest = max(sum(1 for t in sent if start <= t < start + window) for start in sent)
    # The rate's share of a window, the burst, and a little for the threads' wake-up
    # jitter; twice the rate would be 40.
    assert busiest <= rate * window + 1 + 3, busiest
    elapsed = sent[-1] - sent[0]
    assert elapsed >= (2 * sends - 2) / rate * 0.9, elapsed


def test_a_reservation_behind_too_much_debt_takes_nothing(database_url: str) -> None:
    engines = _pace_engines(database_url)
    try:
        now = time.time()
        assert reserve_send(engines, "ses", 1, 10.0, 1.0, 1.0, now) == 0.0
        # 30 sends at 10/s after the burst was taken: told to wait 3 s.
        wait = reserve_send(engines, "ses", 30, 10.0, 1.0, 1.0, now)
        # (On PostgreSQL the database's clock moves on between the statements.)
        assert wait is not None and 2.7 < wait <= 3.0 + 1e-6
        # Now the others' debt is beyond max_wait: refused, and nothing is taken.
        assert reserve_send(engines, "ses", 1, 10.0, 1.0, 1.0, now) is None
        assert reserve_send(engines, "other", 1, 10.0, 1.0, 1.0, now) == 0.0
        wait = reserve_send(engines, "ses", 1, 10.0, 1.0, 5.0, now)
        assert wait is not None and 2.8 < wait <= 3.1 + 1e-6
    finally:
        engines.dispose()


def test_load_settings_says_why_a_role_cannot_run(tmp_path: Path) -> None:
    from mailflow.config import load_settings

    with pytest.raises(ConfigurationError, match="role web runs beside other relay"):
        load_settings(None, data_dir=tmp_path, role="web")


def test_relays_starting_at_once_on_a_new_database_migrate_it_once(
        postgres_url: str) -> None:
    """Split roles start on several hosts at the same time: one migrates, the others
    wait for it (an advisory lock) instead of failing on tables that now exist."""
    from mailflow.store.migrate import HEAD, current_revision

    problems: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        engines = create_engines(postgres_url)
        try:
            barrier.wait(10)
            upgrade_to_head(engines.writer)
        except BaseException as exc:  # reported by the test's thread
            problems.append(exc)
        finally:
            engines.dispose()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not problems, problems
    engines = create_engines(postgres_url)
    assert current_revision(engines.writer) == HEAD
    engines.dispose()


def test_each_role_serves_its_own_part_and_checks_only_what_it_needs(
        postgres_url: str, tmp_path: Path) -> None:
    import json
    import urllib.error
    import urllib.request

    common = {"MAILFLOW_SHARED_BLOBS": "true", "MAILFLOW_EGRESS": "smtp",
              "MAILFLOW_SMTP_RELAY": "smtp://127.0.0.1:9"}  # nobody there
    ingress = RelayProcess(tmp_path / "ingress", database_url=postgres_url,
                           settings={**common, "MAILFLOW_ROLE": "ingress"})
    web = RelayProcess(tmp_path / "web", database_url=postgres_url,
                       settings={**common, "MAILFLOW_ROLE": "web"}, smtp=False)
    worker = RelayProcess(tmp_path / "worker", database_url=postgres_url,
                          settings={**common, "MAILFLOW_ROLE": "worker"}, smtp=False)
    ingress.init()

    def get(relay: RelayProcess, path: str, data: bytes | None = None) -> tuple[int, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{relay.http_port}{path}",
                                         data=data)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    with ingress, web, worker:
        # A worker serves its health and its own counters, nothing else; it sends, so
        # its readiness names the next hop nobody answers on.
        status, body = get(worker, "/readyz")
        assert status == 503 and "egress" in json.loads(body)["failed"], body
        status, body = get(worker, "/metrics")
        assert status == 200 and "mailflow_delivery_attempts_total" in body, body[:500]
        assert get(worker, "/v1/email", b"x")[0] == 404
        assert get(worker, "/api/v1/lists")[0] == 404
        # Neither sends: an unreachable next hop does not make them unready.
        status, body = get(ingress, "/readyz")
        assert status == 200 and json.loads(body)["checks"] == {"store": "ok",
                                                                "blob_store": "ok"}
        status, body = get(web, "/readyz")
        assert status == 200 and json.loads(body)["checks"] == {"store": "ok"}
        assert get(ingress, "/v1/email", b"x")[0] == 401  # there, wants its key
        assert get(web, "/v1/email", b"x")[0] == 404
        assert get(web, "/api/v1/lists")[0] == 401  # there, wants a token
        assert get(ingress, "/api/v1/lists")[0] == 404
        assert "MailFlow Relay is running (role web): HTTP on" in web.log()
