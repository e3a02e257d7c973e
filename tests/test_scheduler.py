"""The scheduler in-process with a moved clock: batching, backoff and the maximum age;
with the real clock: leases renewed while a transaction is on the wire."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from mailflow.backoff import RetryPolicy
from mailflow.blobs import BlobStore, content_hash
from mailflow.clock import Clock, SystemClock
from mailflow.config import parse_smtp_relay
from mailflow.egress.base import RecipientReply
from mailflow.egress.smtp import SmtpEgress
from mailflow.metrics import REGISTRY
from mailflow.model import Delivery, InboundMessage, ListKind, Outcome
from mailflow.pipeline.notice import Failure
from mailflow.services.commit import (
    GroupCommitter,
    IngestActivity,
    IngestBatch,
    InlineExpansion,
    store_batch,
)
from mailflow.services.processor import expand_received
from mailflow.services.scheduler import Scheduler, SchedulerOptions
from mailflow.srs import Srs
from mailflow.store import Engines, StoreRunner
from mailflow.testing.clock import FakeClock
from mailflow.testing.factories import make_list, make_message
from mailflow.testing.sink import SmtpSink


class ScriptedEgress:
    """Answers every recipient with the next code in ``codes`` (then 250)."""

    name = "scripted"

    def __init__(self, *codes: int) -> None:
        self.codes = list(codes)
        self.transactions: list[tuple[str, tuple[str, ...]]] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, mail_from: str, recipients: Sequence[str],
                   content: bytes) -> list[RecipientReply]:
        self.transactions.append((mail_from, tuple(recipients)))
        code = self.codes.pop(0) if self.codes else 250
        return [RecipientReply(r, code, "scripted") for r in recipients]


async def run_until(predicate: Callable[[dict[str, int]], bool], runner: StoreRunner,
                    limit: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        counts = await runner.read(runner.repo.delivery_counts)
        if predicate(counts):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out; counts {counts}")


async def wait_for(condition: Callable[[], bool], limit: float = 10.0) -> None:
    """Until ``condition`` holds (checked after every turn of the loop), at most ``limit`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        if loop.time() >= deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.005)


def record_claims(runner: StoreRunner) -> list[int]:
    """How many deliveries each of the keeper's claim rounds takes, from now on."""
    claims: list[int] = []
    record_and_claim = runner.repo.record_and_claim

    def recorded(now: float, outcomes: Sequence[Outcome], limit: int, lease: float,
                 owner: str) -> tuple[list[Delivery], list[Outcome]]:
        claimed, stale = record_and_claim(now, outcomes, limit, lease, owner)
        if limit:
            claims.append(len(claimed))
        return claimed, stale

    runner.repo.record_and_claim = recorded  # type: ignore[method-assign]
    return claims


def post_to_list(runner: StoreRunner, blobs: BlobStore, clock: Clock,
                 members: list[str]) -> None:
    """A post to team@example.test, stored and expanded: one delivery per member."""
    make_list(runner.repo, "team@example.test", members)
    data = make_message("team@example.test")
    digest = content_hash(data)
    message = InboundMessage("m1", "p@outside.test", ("team@example.test",), digest,
                             len(data), clock.now(), "127.0.0.1", "c.test", "ESMTP")
    store_batch(runner.repo, IngestBatch([message]), clock.now(),
                lambda: blobs.write_many([(digest, data)]))
    expand_received(runner.repo, clock.now(), 10)


def options(lease: float = 60, max_recipients: int = 50, concurrency: int = 4,
            transaction_timeout: float = 600.0) -> SchedulerOptions:
    return SchedulerOptions(
        batch_size=1000, max_recipients=max_recipients, concurrency=concurrency, lease=lease,
        owner="test", instance_id="abc", hostname="relay.test",
        retry=RetryPolicy(initial_delay=60, multiplier=2, max_delay=3600, max_age=600),
        transaction_timeout=transaction_timeout)


@pytest.fixture
def setup(engines: Engines, tmp_path: Path):  # type: ignore[no-untyped-def]
    runner = StoreRunner(engines)
    blobs = BlobStore(tmp_path / "blobs")
    clock = FakeClock()

    def post(members: list[str]) -> None:
        post_to_list(runner, blobs, clock, members)

    def scheduler(egress: ScriptedEgress, max_recipients: int = 50,
                  ingest_busy: Callable[[], bool] = lambda: False) -> Scheduler:
        return Scheduler(runner, blobs, egress, clock, options(max_recipients=max_recipients),
                         ingest_busy=ingest_busy)

    yield runner, clock, post, scheduler
    runner.close()


@pytest.fixture
def real_time(engines: Engines, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A store, blobs and the system clock: for leases that really run out."""
    runner = StoreRunner(engines)
    yield runner, BlobStore(tmp_path / "blobs")
    runner.close()


def leases_lost(stage: str) -> float:
    return REGISTRY.get_sample_value("mailflow_leases_lost_total", {"stage": stage}) or 0.0


async def test_recipients_are_batched_per_transaction(setup) -> None:  # type: ignore[no-untyped-def]
    runner, _, post, make_scheduler = setup
    post([f"m{i}@x.test" for i in range(120)])
    egress = ScriptedEgress()
    scheduler = make_scheduler(egress, max_recipients=50)
    await scheduler.start()
    try:
        await run_until(lambda c: c["delivered"] == 120, runner)
    finally:
        await scheduler.stop()
    assert sorted(len(rcpts) for _, rcpts in egress.transactions) == [20, 50, 50]
    assert {sender for sender, _ in egress.transactions} == {"team-bounces@example.test"}


async def test_deferred_with_backoff_then_failed_after_max_age(setup) -> None:  # type: ignore[no-untyped-def]
    runner, clock, post, make_scheduler = setup
    post(["a@x.test"])
    egress = ScriptedEgress(*([451] * 100))
    scheduler = make_scheduler(egress)
    await scheduler.start()
    try:
        await run_until(lambda c: c["deferred"] == 1, runner)
        [row] = await runner.read(runner.repo.list_deliveries, 10)
        assert row.due_at == pytest.approx(clock.now() + 60)  # first retry after 60 s
        # Nothing is sent before the clock reaches the retry time: a claim round at
        # this time (woken, so it does not wait for a timer) finds nothing due.
        claims = record_claims(runner)
        scheduler.wake()
        await wait_for(lambda: len(claims) >= 1)
        assert claims[0] == 0 and len(egress.transactions) == 1
        clock.advance(60)
        scheduler.wake()
        await run_until(lambda c: c["deferred"] == 1 and len(egress.transactions) == 2, runner)
        [row] = await runner.read(runner.repo.list_deliveries, 10)
        assert (row.attempts, row.due_at) == (2, pytest.approx(clock.now() + 120))
        clock.advance(600)  # past the maximum age: the next 4xx is final
        scheduler.wake()
        await run_until(lambda c: c["failed"] == 1, runner)
    finally:
        await scheduler.stop()
    [row] = await runner.read(runner.repo.list_deliveries, 10)
    assert row.last_reply.startswith("451")


async def test_stop_hands_back_claimed_deliveries(setup) -> None:  # type: ignore[no-untyped-def]
    runner, _, post, make_scheduler = setup
    post([f"m{i}@x.test" for i in range(10)])

    class Slow(ScriptedEgress):
        async def send(self, mail_from, recipients, content):  # type: ignore[no-untyped-def]
            await asyncio.sleep(30)
            return await super().send(mail_from, recipients, content)

    scheduler = make_scheduler(Slow(), max_recipients=1)
    await scheduler.start()
    await run_until(lambda c: c["in_flight"] == 10, runner)
    await scheduler.stop(grace=0.1)
    counts = await runner.read(runner.repo.delivery_counts)
    assert counts["queued"] == 10 and counts["in_flight"] == 0


async def test_stop_before_start_does_nothing(setup) -> None:  # type: ignore[no-untyped-def]
    """A relay whose start failed (a port in use) stops a scheduler it never started."""
    _, _, _, make_scheduler = setup
    scheduler = make_scheduler(ScriptedEgress())
    await scheduler.stop()
    assert scheduler.ingest_lease() is None


async def test_outcomes_ride_with_the_next_ingest_transaction(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """While an ingest transaction is coming, the keeper leaves outcomes to it; once the
    ingest is idle, the keeper writes them itself."""
    runner, clock, post, make_scheduler = setup
    post(["a@x.test", "b@x.test"])
    ingest_coming = True
    activity = IngestActivity()
    scheduler_egress = ScriptedEgress()
    scheduler = make_scheduler(scheduler_egress, max_recipients=1,
                               ingest_busy=lambda: ingest_coming or activity.busy())
    committer = GroupCommitter(runner, BlobStore(tmp_path / "blobs"), clock, body_limit=65536,
                               expansion=InlineExpansion(1000), queue=scheduler,
                               activity=activity)
    committing = asyncio.create_task(committer.run())
    await scheduler.start()
    try:
        # Both copies are sent; their outcomes wait for the ingest transaction.
        await wait_for(lambda: len(scheduler_egress.transactions) == 2)
        await asyncio.sleep(0)  # the senders hand their outcomes to the keeper
        assert (await runner.read(runner.repo.delivery_counts))["in_flight"] == 2
        data = make_message("team@example.test", subject="second")
        await committer.commit(InboundMessage(
            "m2", "p@outside.test", ("team@example.test",), content_hash(data), len(data),
            clock.now(), "127.0.0.1", "c.test", "ESMTP"), data)
        # That transaction stored m2 and wrote m1's two outcomes.
        counts = await runner.read(runner.repo.delivery_counts)
        assert counts["delivered"] == 2
        # m2's own copies: with the ingest idle now, the keeper writes their outcomes.
        ingest_coming = False
        await run_until(lambda c: c["delivered"] == 4, runner)
    finally:
        await scheduler.stop()
        committing.cancel()
        await asyncio.gather(committing, return_exceptions=True)


async def test_utf8_recipients_get_a_transaction_of_their_own(setup) -> None:  # type: ignore[no-untyped-def]
    """So the ASCII members never depend on whether the next hop takes SMTPUTF8."""
    runner, _, post, make_scheduler = setup
    post(["a@x.test", "ünï@x.test", "b@x.test"])
    egress = ScriptedEgress()
    scheduler = make_scheduler(egress)
    await scheduler.start()
    try:
        await run_until(lambda c: c["delivered"] == 3, runner)
    finally:
        await scheduler.stop()
    assert sorted(sorted(rcpts) for _, rcpts in egress.transactions) == [
        ["a@x.test", "b@x.test"], ["ünï@x.test"]]


async def test_a_transaction_longer_than_its_lease_is_sent_once(real_time) -> None:  # type: ignore[no-untyped-def]
    """The next hop answers each RCPT after 0.2 s, one command at a time (no PIPELINING):
    eight recipients take over three terms of a 0.5 s lease.  The heartbeat renews the
    leases, so they are never claimed and sent again: one copy and one attempt each."""
    runner, blobs = real_time
    clock = SystemClock()
    members = [f"m{i}@x.test" for i in range(8)]
    post_to_list(runner, blobs, clock, members)
    with SmtpSink() as sink:
        sink.handler.pipelining = False
        sink.handler.rcpt_delay = 0.2
        egress = SmtpEgress(parse_smtp_relay(sink.url), pool_size=4, timeout=5,
                            idle_check=10, local_hostname="relay.test")
        scheduler = Scheduler(runner, blobs, egress, clock, options(lease=0.5))
        await scheduler.start()
        started = asyncio.get_running_loop().time()
        try:
            await run_until(lambda c: c["delivered"] == 8, runner)
            took = asyncio.get_running_loop().time() - started
        finally:
            await scheduler.stop()
            await egress.close()
    assert took > 3 * 0.5  # the lease really ran out three times over
    assert sorted(sink.recipients()) == members
    assert sink.handler.rcpts_seen == 8  # not even a second envelope began
    rows = await runner.read(runner.repo.list_deliveries, 100)
    assert {(row.status, row.attempts) for row in rows} == {("delivered", 1)}


class GatedEgress(ScriptedEgress):
    """Holds every transaction on the wire until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def send(self, mail_from: str, recipients: Sequence[str],
                   content: bytes) -> list[RecipientReply]:
        self.transactions.append((mail_from, tuple(recipients)))
        await self.gate.wait()
        return [RecipientReply(r, 250, "ok") for r in recipients]


async def test_a_lost_lease_is_neither_sent_nor_recorded(real_time) -> None:  # type: ignore[no-untyped-def]
    """Another holder took both deliveries (their leases ran out there, say): the one on
    the wire finishes, but its outcome is not applied; the one waiting is not sent."""
    runner, blobs = real_time
    clock = SystemClock()
    post_to_list(runner, blobs, clock, ["a@x.test", "b@x.test"])
    egress = GatedEgress()
    scheduler = Scheduler(runner, blobs, egress, clock,
                          options(lease=0.3, max_recipients=1, concurrency=1))
    waiting, outcome = leases_lost("waiting"), leases_lost("outcome")
    await scheduler.start()
    try:
        await wait_for(lambda: len(egress.transactions) == 1)
        # Claimed by another relay, as if at a time both leases had run out.
        stolen = await runner.write(runner.repo.claim_due_deliveries, clock.now() + 10, 10,
                                    60, "other/1")
        assert len(stolen) == 2
        await wait_for(lambda: leases_lost("waiting") == waiting + 1)  # the heartbeat saw it
        egress.gate.set()
        await wait_for(lambda: leases_lost("outcome") == outcome + 1)
    finally:
        egress.gate.set()
        await scheduler.stop()
    assert len(egress.transactions) == 1
    counts = await runner.read(runner.repo.delivery_counts)
    assert (counts["in_flight"], counts["delivered"]) == (2, 0)  # the other holder's


async def test_a_transaction_on_the_wire_past_its_timeout_loses_its_leases(real_time) -> None:  # type: ignore[no-untyped-def]
    """A send that never ends (an egress without a bound) is not renewed for ever: after
    the transaction timeout its leases run out and the deliveries are claimed again."""
    runner, blobs = real_time
    clock = SystemClock()
    post_to_list(runner, blobs, clock, ["a@x.test"])
    egress = GatedEgress()
    scheduler = Scheduler(runner, blobs, egress, clock,
                          options(lease=0.3, transaction_timeout=0.2))
    await scheduler.start()
    try:
        await wait_for(lambda: len(egress.transactions) == 2)
    finally:
        egress.gate.set()
        await scheduler.stop()



async def test_alias_forwards_failed_for_good_are_reported_lists_are_not(
        engines: Engines, tmp_path: Path) -> None:
    runner, blobs, clock = StoreRunner(engines), BlobStore(tmp_path / "blobs"), FakeClock()
    try:
        post_to_list(runner, blobs, clock, ["member@x.test"])  # fails too, not reported
        make_list(runner.repo, "info@example.test", ["t1@x.test", "t2@x.test"],
                  kind=ListKind.ALIAS)
        data = make_message("info@example.test", sender="alice@origin.example")
        digest = content_hash(data)
        message = InboundMessage("m2", "alice@origin.example", ("info@example.test",),
                                 digest, len(data), clock.now(), "127.0.0.1", "c.test",
                                 "ESMTP")
        store_batch(runner.repo, IngestBatch([message]), clock.now(),
                    lambda: blobs.write_many([(digest, data)]))
        expand_received(runner.repo, clock.now(), 10)
        egress = ScriptedEgress(550, 550)
        scheduler = Scheduler(runner, blobs, egress, clock,
                              replace(options(), srs=Srs("k")))
        reported: list[Failure] = []
        scheduler.on_failed = reported.append
        await scheduler.start()
        try:
            await run_until(lambda c: c["failed"] == 3, runner)
        finally:
            await scheduler.stop()
    finally:
        runner.close()
    (failure,) = reported
    assert (failure.message.id, failure.alias, failure.expired) == (
        "m2", "info@example.test", False)
    assert failure.replies == ("550 scripted", "550 scripted")
    assert b"Subject:" in failure.header
    senders = {rcpts: sender for sender, rcpts in egress.transactions}
    assert senders[("member@x.test",)] == "team-bounces@example.test"
    assert senders[("t1@x.test", "t2@x.test")].endswith("=origin.example=alice@example.test")


async def test_transactions_starting_together_share_one_rendering_and_signature(
        setup) -> None:  # type: ignore[no-untyped-def]
    """A post's shared copy is made (and signed: its ``t=`` is when) once, however many
    of its transactions start at the same time: the others wait for those bytes."""
    runner, _, post, make_scheduler = setup
    post([f"m{i}@x.test" for i in range(40)])
    contents: list[bytes] = []

    class Recording(ScriptedEgress):
        async def send(self, mail_from: str, recipients: Sequence[str],
                       content: bytes) -> list[RecipientReply]:
            contents.append(content)
            return await super().send(mail_from, recipients, content)

    signed: list[int] = []

    def sign(content: bytes) -> bytes:  # on a rendering thread, slow enough to overlap
        signed.append(len(signed) + 1)
        time.sleep(0.05)
        return f"X-Signed: {len(signed)}\r\n".encode() + content

    async def signer(_: object) -> Callable[[bytes], bytes]:
        return sign

    scheduler = make_scheduler(Recording(), max_recipients=10)  # 4 transactions, 4 senders
    scheduler.signer = signer
    await scheduler.start()
    try:
        await run_until(lambda c: c["delivered"] == 40, runner)
    finally:
        await scheduler.stop()
    assert len(contents) == 4
    assert signed == [1]
    assert {c.split(b"\r\n", 1)[0] for c in contents} == {b"X-Signed: 1"}
