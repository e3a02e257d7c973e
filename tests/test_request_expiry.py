"""Requests to join an ``approve`` list expire as held posts do: the moderation sweep
removes those older than their list's ``hold_days`` (bounded batches), logs and records
each, and tells the address; on SQLite and PostgreSQL, on a fake clock.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from mailflow.cli import cli
from mailflow.config import Settings
from mailflow.confirm_tokens import ConfirmTokens
from mailflow.errors import NotFound, spec
from mailflow.model import GENERATED, InboundMessage, MembershipAction, MembershipChange
from mailflow.pipeline.process.commands import ListCommands
from mailflow.services import moderation
from mailflow.services.directory import DirectoryService
from mailflow.services.installation import initialise
from mailflow.services.moderation import ModerationSweep
from mailflow.services.subscriptions import Subscriptions
from mailflow.store import Repository, create_cli_engines
from mailflow.store.engine import Engines
from mailflow.store.runner import StoreRunner
from mailflow.store.tables import events
from mailflow.testing.clock import FakeClock
from mailflow.testing.factories import make_list

TEAM = "team@example.test"    # hold_days 2
SLOW = "slow@example.test"    # hold_days 5
NOW = 1_800_000_000.0
DAY = 86_400.0
PUBLIC = "https://lists.example.test"
STEP = ListCommands(ConfirmTokens("expiry-test-secret", max_age=DAY), PUBLIC)


def no_content(message: InboundMessage) -> bytes:
    raise AssertionError(f"no held post to read ({message.id})")


def ask(repo: Repository, list_address: str, address: str, at: float) -> int:
    """A request to join, as a ``subscribe`` to an ``approve`` list records it."""
    target = repo.get_list(list_address)
    with repo.ingest_transaction() as tx:
        tx.apply_memberships([MembershipChange(target.id, address, MembershipAction.REQUEST)],
                             [], at)
    return next(r.id for r in repo.subscription_requests(list_address)
                if r.address == address)


def waiting(repo: Repository) -> list[str]:
    return sorted(r.address for r in repo.subscription_requests())


def notices(repo: Repository) -> dict[str, EmailMessage]:
    """The mail queued so far, by recipient."""
    found: dict[str, EmailMessage] = {}
    deliveries = repo.list_deliveries(100)
    stored = repo.delivery_context(list({d.message_id for d in deliveries}), [])[0]
    for delivery in deliveries:
        message = stored[delivery.message_id]
        assert (message.mail_from, message.protocol) == ("", GENERATED)
        parsed = email.message_from_bytes(repo.stored_body(message.blob) or b"",
                                          policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        found[delivery.recipient] = parsed
    return found


def expiry_events(engines: Engines) -> list[str]:
    with engines.reader.connect() as conn:
        return list(conn.scalars(select(events.c.detail).where(events.c.kind == "expired")
                                 .order_by(events.c.id)))


def expired_logs(caplog: pytest.LogCaptureFixture) -> list[int]:
    return [int(r.__dict__["request_id"]) for r in caplog.records
            if getattr(r, "action", None) == "request_expired"]


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def test_requests_expire_after_their_lists_hold_days(
        engines: Engines, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailflow.services.moderation")
    runner = StoreRunner(engines, pool_size=1)
    repo = runner.repo
    make_list(repo, TEAM, name="The Team")
    make_list(repo, SLOW)
    directory = DirectoryService(repo, FakeClock(NOW))
    directory.update_list(TEAM, subscription="approve", hold_days=2)
    directory.update_list(SLOW, subscription="approve", hold_days=5)
    directory.add_members(TEAM, ["own@x.test"], role="owner")
    ann = ask(repo, TEAM, "ann@outside.test", NOW)
    robot = ask(repo, TEAM, "noreply@outside.test", NOW)
    added = ask(repo, TEAM, "cat@outside.test", NOW)
    directory.add_members(TEAM, ["cat@outside.test"])  # by an owner, the request left
    late = ask(repo, TEAM, "late@outside.test", NOW + DAY)
    bob = ask(repo, SLOW, "bob@outside.test", NOW)
    clock = FakeClock(NOW + 2 * DAY - 1)
    woken: list[bool] = []
    sweep = ModerationSweep(runner, clock, no_content, interval=1.0,
                            on_queued=lambda: woken.append(True), public_url=PUBLIC)

    assert asyncio.run(sweep.sweep()) == (0, 0, 0)  # a second short of two days
    assert len(waiting(repo)) == 5 and notices(repo) == {} and not woken

    clock.advance(1)
    assert asyncio.run(sweep.sweep()) == (0, 0, 3)
    assert waiting(repo) == ["bob@outside.test", "late@outside.test"]
    assert sorted(expired_logs(caplog)) == sorted([ann, robot, added])  # once each
    mailed = notices(repo)
    assert list(mailed) == ["ann@outside.test"]  # not the robot, nor the new member
    notice = mailed["ann@outside.test"]
    assert notice["From"] == "team-request@example.test"
    assert notice["Subject"] == "Your request to join The Team expired"
    assert notice["Auto-Submitted"] == "auto-generated"
    text = " ".join(text_of(notice).split())
    assert (f"Your request to join The Team <{TEAM}> was not answered by the list's "
            "owners within 2 day(s), so it has expired.") in text
    assert "You may ask again" in text and f"{PUBLIC}/lists/{TEAM}" in text
    assert woken == [True]
    assert expiry_events(engines) == [  # in the order asked
        f"{TEAM}: request of <{a}> to join expired unanswered after 2 day(s); {how}"
        for a, how in [("ann@outside.test", "the address was told"),
                       ("noreply@outside.test", "not told, a robot address"),
                       ("cat@outside.test", "a member already")]]

    clock.advance(DAY)  # three days: the team's late request, not yet the slow list's
    assert asyncio.run(sweep.sweep()) == (0, 0, 1)
    assert waiting(repo) == ["bob@outside.test"]
    clock.advance(2 * DAY - 1)
    assert asyncio.run(sweep.sweep()) == (0, 0, 0)
    clock.advance(1)
    assert asyncio.run(sweep.sweep()) == (0, 0, 1)
    assert waiting(repo) == []
    assert "within 5 day(s)" in " ".join(text_of(notices(repo)["bob@outside.test"]).split())
    assert sorted(expired_logs(caplog)) == sorted([ann, robot, added, late, bob])
    assert len(expiry_events(engines)) == 5

    subscriptions = Subscriptions(repo, clock, STEP)
    for decide in (subscriptions.approve, subscriptions.reject):
        for expired in (ann, bob):
            with pytest.raises(NotFound) as gone:
                decide(expired)
            assert str(gone.value) == f"no request {expired} waiting"
        with pytest.raises(NotFound) as unknown:
            decide(999_999)
        assert str(unknown.value) == "no request 999999 waiting"
    runner.close()


def test_a_backlog_expires_in_bounded_batches(engines: Engines,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(moderation, "SWEEP_BATCH", 2)
    monkeypatch.setattr(moderation, "SWEEP_ROUNDS", 2)
    runner = StoreRunner(engines, pool_size=1)
    repo = runner.repo
    make_list(repo, TEAM)
    DirectoryService(repo, FakeClock(NOW)).update_list(TEAM, subscription="approve",
                                                       hold_days=1)
    for n in range(5):
        ask(repo, TEAM, f"p{n}@outside.test", NOW + n)
    sweep = ModerationSweep(runner, FakeClock(NOW + 10 * DAY), no_content, interval=1.0)
    assert asyncio.run(sweep.sweep()) == (0, 0, 4)  # two rounds of two, oldest first
    assert waiting(repo) == ["p4@outside.test"]
    assert asyncio.run(sweep.sweep()) == (0, 0, 1)
    assert len(notices(repo)) == 5
    runner.close()


def test_the_cli_says_an_expired_request_is_not_waiting(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, hostname="relay.test")
    initialise(settings)
    engines = create_cli_engines(settings.resolved_database_url)
    try:
        repo = Repository(engines)
        make_list(repo, TEAM)
        DirectoryService(repo, FakeClock(NOW)).update_list(TEAM, subscription="approve")
        old = ask(repo, TEAM, "ann@outside.test", NOW)
        runner = StoreRunner(engines, pool_size=1)
        sweep = ModerationSweep(runner, FakeClock(NOW + 14 * DAY), no_content, interval=1.0)
        assert asyncio.run(sweep.sweep()) == (0, 0, 1)
        runner.close()
    finally:
        engines.dispose()
    cli_runner = CliRunner(env={"MAILFLOW_DATA_DIR": str(tmp_path), "MAILFLOW_CONFIG": ""})
    for args, missing in ((["approve", str(old)], old), (["reject", str(old)], old),
                          (["approve", "999999"], 999_999)):
        result = cli_runner.invoke(cli, ["requests", *args])
        assert isinstance(result.exception, NotFound), result.output
        assert spec(result.exception).cli_exit == 3
        assert str(result.exception) == f"no request {missing} waiting"
