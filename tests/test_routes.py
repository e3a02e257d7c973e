"""Routes: matching recipient domains, one lane per provider, and fairness between lanes."""

from __future__ import annotations

import asyncio
import json
import smtplib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailflow.app import build_egress
from mailflow.backoff import RetryPolicy
from mailflow.blobs import BlobStore, content_hash
from mailflow.child.egress import ProcessEgress
from mailflow.config import RouteSpec, Settings, parse_routes
from mailflow.egress.base import Egress
from mailflow.egress.lmtp import LmtpEgress
from mailflow.egress.routes import (
    ProviderOptions,
    RoutedEgress,
    RouteTable,
    build_provider,
    build_routed,
)
from mailflow.egress.smtp import SmtpEgress
from mailflow.egress.stdout import StdoutEgress
from mailflow.model import InboundMessage
from mailflow.services.commit import IngestBatch, store_batch
from mailflow.services.lanes import Lane
from mailflow.services.processor import expand_received
from mailflow.services.scheduler import Scheduler, SchedulerOptions
from mailflow.smtp_relay import parse_smtp_relay
from mailflow.store import Engines, StoreRunner
from mailflow.testing.clock import FakeClock
from mailflow.testing.factories import make_list, make_message
from mailflow.testing.ports import free_port
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink

CONTENT = b"From: a@x.test\r\nSubject: t\r\n\r\nbody\r\n"
OPTIONS = ProviderOptions(pool_size=2, timeout=5, idle_check=10)


# -- matching -------------------------------------------------------------------------


def table(spec: str) -> RouteTable:
    """Lane n for the n-th route of ``spec`` (lane 0 is the default)."""
    return RouteTable([(s.domain, n) for n, s in enumerate(parse_routes(spec), start=1)])


def test_exact_domain_beats_a_wildcard_and_the_longest_wildcard_wins() -> None:
    routes = table("*.corp.example=smtp://a,*.eu.corp.example=smtp://b,"
                   "mail.eu.corp.example=smtp://c,internal.example=lmtp://d")
    assert routes.lane_of("x@a.corp.example") == 1
    assert routes.lane_of("x@deep.a.corp.example") == 1
    assert routes.lane_of("x@fr.eu.corp.example") == 2
    assert routes.lane_of("x@mail.eu.corp.example") == 3
    assert routes.lane_of("x@Internal.Example") == 4
    assert routes.lane_of("x@sub.internal.example") == 0  # exact names no subdomains
    assert routes.lane_of("x@corp.example") == 0  # *. matches subdomains only
    assert routes.lane_of("x@elsewhere.test") == 0


def test_without_wildcards_only_exact_domains_match() -> None:
    routes = table("internal.example=lmtp://d")
    assert routes.lane_of("a@internal.example") == 1
    assert routes.lane_of("a@x.internal.example") == 0
    assert routes.lane_of("no-domain") == 0


def test_routes_naming_the_same_url_or_the_default_share_a_lane() -> None:
    default = build_provider("smtp://127.0.0.1:2525", OPTIONS)
    egress = build_routed(default, "smtp://127.0.0.1:2525", parse_routes(
        "a.test=lmtp://127.0.0.1:24,b.test=lmtp://127.0.0.1:24,"
        "c.test=smtp://127.0.0.1:2525,d.test=smtp://127.0.0.1:2600"), OPTIONS)
    assert isinstance(egress, RoutedEgress)
    assert [lane.name for lane in egress.lanes] == [
        "smtp://127.0.0.1:2525", "lmtp://127.0.0.1:24", "smtp://127.0.0.1:2600"]
    assert egress.lanes[0].egress is default
    assert isinstance(egress.lanes[1].egress, LmtpEgress)
    assert [egress.lane_of(f"x@{d}.test") for d in "abcde"] == [1, 1, 0, 2, 0]
    assert build_routed(default, "smtp://127.0.0.1:2525", (), OPTIONS) is default


async def test_a_routed_egress_splits_one_transaction_by_route() -> None:
    with SmtpSink() as outside, SmtpSink(lmtp=True) as inside:
        egress = build_routed(build_provider(outside.url, OPTIONS), outside.url,
                              [RouteSpec("inside.test", inside.url)], OPTIONS)
        inside.fail_delivery("b@inside.test", "550 5.1.1 gone")
        try:
            replies = await egress.send("l@x.test", ["a@inside.test", "o@out.test",
                                                     "b@inside.test"], CONTENT)
        finally:
            await egress.close()
    assert [(r.recipient, r.code) for r in replies] == [
        ("a@inside.test", 250), ("o@out.test", 250), ("b@inside.test", 550)]
    assert (inside.recipients(), outside.recipients()) == (["a@inside.test"], ["o@out.test"])


async def test_an_unreachable_route_answers_only_for_its_own_recipients(
        sink: SmtpSink) -> None:
    down = f"lmtp://127.0.0.1:{free_port()}"
    egress = build_routed(build_provider(sink.url, OPTIONS), sink.url,
                          [RouteSpec("inside.test", down)], OPTIONS)
    try:
        replies = await egress.send("l@x.test", ["a@inside.test", "o@out.test"], CONTENT)
    finally:
        await egress.close()
    assert [(r.recipient, r.code, r.text[:5]) for r in replies] == [
        ("a@inside.test", 451, "4.4.1"), ("o@out.test", 250, "2.0.0")]


# -- fairness: a hanging route does not hold up another ------------------------------


def test_a_busy_lane_holds_work_for_a_bounded_time() -> None:
    """A lane takes more while its queue would be on the wire within its backlog
    seconds; the slowest transaction in flight counts before any has finished."""
    lane: Lane[int] = Lane("lmtp://mailbox.test:24", build_provider("stdout:", OPTIONS),
                           concurrency=2, backlog_seconds=10)
    for n in range(8):
        lane.ready.put_nowait(n)
    assert not lane.has_room and lane.takes_more(now=0.0)
    token = lane.started(now=0.0)
    assert lane.drain_seconds(now=1.0) == 4.0 and lane.takes_more(now=1.0)
    assert lane.drain_seconds(now=3.0) == 12.0 and not lane.takes_more(now=3.0)
    lane.finished(token, now=3.0)  # the pace is learnt: 0.2 * 3 s
    assert lane.drain_seconds(now=3.0) == pytest.approx(8 * 0.6 / 2)


@pytest.fixture
def hanging_server() -> Iterator[str]:
    """A server that takes connections and never greets: every session waits it out."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as server:
        yield f"smtp://127.0.0.1:{server.getsockname()[1]}"


def post(runner: StoreRunner, blobs: BlobStore, clock: FakeClock, message_id: str) -> None:
    data = make_message("team@example.test", subject=message_id)
    digest = content_hash(data)
    message = InboundMessage(message_id, "p@outside.test", ("team@example.test",), digest,
                             len(data), clock.now(), "127.0.0.1", "c.test", "ESMTP")
    store_batch(runner.repo, IngestBatch([message]), clock.now(),
                lambda: blobs.write_many([(digest, data)]))
    expand_received(runner.repo, clock.now(), 10)


async def counts_reach(runner: StoreRunner, predicate: Callable[[dict[str, int]], bool],
                       limit: float = 10.0) -> dict[str, int]:
    """The delivery counts once ``predicate`` holds for them (polled: the store is shared)."""
    async with asyncio.timeout(limit):
        while True:
            counts = await runner.read(runner.repo.delivery_counts)
            if predicate(counts):
                return counts
            await asyncio.sleep(0.02)


async def test_a_hanging_route_does_not_hold_up_the_default(
        engines: Engines, tmp_path: Path, sink: SmtpSink, hanging_server: str) -> None:
    runner, blobs, clock = StoreRunner(engines), BlobStore(tmp_path / "blobs"), FakeClock()
    hung = [f"h{i}@hung.test" for i in range(20)]
    fast = ["a@fast.test", "b@fast.test", "c@fast.test"]
    make_list(runner.repo, "team@example.test", hung + fast)  # the hung ones come first
    # The hanging route waits 60 s for a greeting: far longer than this test may take.
    slow_options = ProviderOptions(pool_size=2, timeout=60, idle_check=10)
    default = SmtpEgress(parse_smtp_relay(sink.url), pool_size=2, timeout=5, idle_check=10)
    egress: Egress = build_routed(default, sink.url, [RouteSpec("hung.test", hanging_server)],
                                  slow_options)
    scheduler = Scheduler(runner, blobs, egress, clock, SchedulerOptions(
        batch_size=1000, max_recipients=1, concurrency=2, lease=600, owner="test",
        instance_id="abc", hostname="relay.test",
        retry=RetryPolicy(initial_delay=60, multiplier=2, max_delay=3600, max_age=3600),
        route_backlog=0))  # a busy route holds nothing beyond its low water
    post(runner, blobs, clock, "m1")
    await scheduler.start()
    try:
        # Twenty one-recipient transactions to the hung route were claimed first; with one
        # queue and two senders the fast copies would wait a minute behind them.
        delivered = await asyncio.to_thread(sink.wait_for_recipients, 3, 10.0)
        assert sorted(delivered) == fast
        counts = await counts_reach(runner, lambda c: c["delivered"] == 3)
        assert counts["in_flight"] == 20
        # A second post while the hung lane is full: its share is handed back to the store
        # instead of piling up behind the hung sessions; the fast copies go out.
        post(runner, blobs, clock, "m2")
        scheduler.wake()
        counts = await counts_reach(runner, lambda c: c["delivered"] == 6 and c["queued"] > 0)
        assert (counts["queued"], counts["in_flight"]) == (20, 20)
        rows = await runner.read(runner.repo.list_deliveries, 100, "queued")
        assert {row.recipient for row in rows} == set(hung)
        assert all(row.due_at >= clock.now() + 1 for row in rows)  # not due at once
        assert all(row.last_reply == "451 4.4.1 route smtp://127.0.0.1:"
                   f"{hanging_server.rsplit(':', 1)[1]} is busy; handed back" for row in rows)
        # Not attempted: no attempt counted (a later backoff stays as it was), no event.
        assert all(row.attempts == 0 for row in rows)
        for row in rows:
            trace = await runner.read(runner.repo.message_events, row.message_id)
            assert all(kind != "queued" for _, kind, _ in trace)
    finally:
        await scheduler.stop(grace=0.2)
        await egress.close()
        runner.close()
    assert sorted(sink.recipients()) == sorted(fast * 2)


# -- end to end: one domain by LMTP, the rest to the default SMTP egress -------------


def queue_json(relay: RelayProcess) -> dict[str, Any]:
    result = relay.cli("queue", "show", "--json", "--limit", "1000")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_the_relay_routes_a_domain_to_an_lmtp_server(
        make_relay: Callable[..., RelayProcess], sink: SmtpSink) -> None:
    with SmtpSink(lmtp=True) as mailboxes:
        mailboxes.fail_delivery("ben@internal.test", "550 5.1.1 mailbox gone")
        mailboxes.fail_delivery("cat@internal.test", "451 4.2.0 mailbox locked")
        relay = make_relay(routes=f"internal.test={mailboxes.url}").start()
        with relay.repository() as repo:
            make_list(repo, "team@example.test", ["ann@internal.test", "ben@internal.test",
                                                  "cat@internal.test", "dan@outside.test"])
        with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
            client.sendmail("poster@outside.test", ["team@example.test"],
                            make_message("team@example.test"))

        assert sink.wait_for_recipients(1) == ["dan@outside.test"]
        # ann at once; cat after its 451 was deferred and retried; ben never.
        got = mailboxes.wait_for_recipients(2)
        assert got == ["ann@internal.test", "cat@internal.test"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            state = queue_json(relay)
            if state["counts"]["delivered"] == 3 and state["counts"]["failed"] == 1:
                break
            time.sleep(0.05)
        by_rcpt = {d["recipient"]: d for d in state["deliveries"]}
        assert by_rcpt["ben@internal.test"]["status"] == "failed"
        assert by_rcpt["ben@internal.test"]["last_reply"] == "550 5.1.1 mailbox gone"
        assert by_rcpt["cat@internal.test"]["status"] == "delivered"
        assert by_rcpt["cat@internal.test"]["attempts"] == 2
        assert (by_rcpt["ann@internal.test"]["attempts"],
                by_rcpt["dan@outside.test"]["attempts"]) == (1, 1)
        # The deferral of cat's copy is on record with the LMTP server's own reply.
        with relay.repository() as repo:
            events = repo.message_events(by_rcpt["cat@internal.test"]["message_id"])
        assert ("deferred", "451 4.2.0 mailbox locked") in [e[1:] for e in events]


# -- the relay's composition: build_egress --------------------------------------------


@pytest.mark.parametrize(("settings", "kind"), [
    ({}, StdoutEgress),
    ({"egress": "stdout:"}, StdoutEgress),
    ({"egress": "smtp"}, ProcessEgress),
    ({"egress": "smtp://mail.test:2526"}, ProcessEgress),
    ({"egress": "smtps://mail.test", "egress_process": False}, SmtpEgress),
    ({"egress": "lmtp://mailbox.test"}, LmtpEgress),  # not served by the child (yet)
])
def test_the_default_egress_is_built_as_before_or_from_its_url(
        settings: dict[str, Any], kind: type) -> None:
    assert type(build_egress(Settings(**settings))) is kind


def test_routes_wrap_the_default_egress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILFLOW_ROUTES", "internal.test=lmtp://127.0.0.1:24")
    egress = build_egress(Settings(egress="smtp"))
    assert isinstance(egress, RoutedEgress)
    assert [type(lane.egress) for lane in egress.lanes] == [ProcessEgress, LmtpEgress]
    assert egress.lane_of("a@internal.test") == 1
