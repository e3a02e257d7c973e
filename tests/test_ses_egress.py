"""The Amazon SES egress against moto in server mode, driven by the real scheduler on
SQLite and PostgreSQL: raw sends in calls of at most 50 destinations, SES's MessageId
kept on each delivery, throttling deferred and retried to exactly one send, refusals
failed; and the parts without a server (header preparation, the token bucket)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from mailflow.backoff import RetryPolicy
from mailflow.blobs import BlobStore, content_hash
from mailflow.clock import SystemClock
from mailflow.config import Settings
from mailflow.egress.routes import ProviderOptions, build_provider
from mailflow.egress.ses import SesEgress
from mailflow.egress.ses_headers import ses_ready
from mailflow.egress.ses_options import SesOptions
from mailflow.egress.token_bucket import TokenBucket
from mailflow.errors import ConfigurationError
from mailflow.model import InboundMessage
from mailflow.services.commit import IngestBatch, store_batch
from mailflow.services.processor import expand_received
from mailflow.services.scheduler import Scheduler, SchedulerOptions
from mailflow.store import Engines, StoreRunner
from mailflow.store.tables import deliveries
from mailflow.testing.aws import MotoServer
from mailflow.testing.factories import make_list
from mailflow.testing.fault_proxy import FaultProxy

SEND_PATH = "/v2/email/outbound-emails"


@pytest.fixture
def ses(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """moto, emptied, with outside.test verified; boto3 in this process pointed at it."""
    moto.reset()
    moto.verify("outside.test")
    for key, value in moto.aws_env().items():
        monkeypatch.setenv(key, value)
    return moto


def post(runner: StoreRunner, blobs: BlobStore, members: list[str], *,
         sender: str = "poster@outside.test") -> str:
    """A post to team@example.test, stored and expanded.  No To field: moto counts the
    header's addresses as destinations too, which real SES does not."""
    make_list(runner.repo, "team@example.test", members)
    data = (f"From: {sender}\r\nSubject: news\r\nMessage-ID: <m1@outside.test>\r\n"
            "Return-Path: <forged@elsewhere.test>\r\n\r\nHello.\r\n").encode()
    digest = content_hash(data)
    message = InboundMessage("m1", sender, ("team@example.test",), digest, len(data),
                             SystemClock().now(), "127.0.0.1", "c.test", "ESMTP")
    store_batch(runner.repo, IngestBatch([message]), SystemClock().now(),
                lambda: blobs.write_many([(digest, data)]))
    expand_received(runner.repo, SystemClock().now(), 10)
    return "m1"


async def deliver(runner: StoreRunner, blobs: BlobStore, egress: SesEgress,
                  until: str = "delivered", count: int = 1, limit: float = 30.0,
                  max_recipients: int = 50) -> dict[str, int]:
    """Run a scheduler (fast retries) until ``count`` deliveries reach ``until``."""
    scheduler = Scheduler(runner, blobs, egress, SystemClock(), SchedulerOptions(
        batch_size=1000, max_recipients=max_recipients, concurrency=4, lease=60,
        owner="test", instance_id="abc", hostname="relay.test", poll_interval=0.05,
        retry=RetryPolicy(initial_delay=0.05, multiplier=1, max_delay=0.05, max_age=600)))
    await egress.start()
    await scheduler.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    try:
        while True:
            counts = await runner.read(runner.repo.delivery_counts)
            if counts.get(until, 0) >= count:
                return counts
            assert loop.time() < deadline, f"timed out; counts {counts}"
            await asyncio.sleep(0.05)
    finally:
        await scheduler.stop()
        await egress.close()


def provider_ids(engines: Engines) -> dict[str, tuple[str, int, str | None]]:
    """recipient -> (status, attempts, provider_message_id) of every delivery."""
    with engines.reader.connect() as conn:
        return {r.recipient: (r.status, r.attempts, r.provider_message_id)
                for r in conn.execute(select(deliveries))}


@pytest.fixture
def store(engines: Engines, tmp_path: Path) -> Iterator[tuple[StoreRunner, BlobStore]]:
    runner = StoreRunner(engines)
    yield runner, BlobStore(tmp_path / "blobs")
    runner.close()


def egress(**options: object) -> SesEgress:
    return SesEgress(SesOptions(**{"max_send_rate": 1000.0, "timeout": 10.0, **options}))


async def test_a_transaction_goes_in_calls_of_50_and_each_delivery_keeps_its_ses_id(
        ses: MotoServer, store: tuple[StoreRunner, BlobStore], engines: Engines) -> None:
    runner, blobs = store
    members = [f"m{i:03}@x.test" for i in range(120)]
    post(runner, blobs, members)
    await deliver(runner, blobs, egress(), count=120, max_recipients=120)
    sends = ses.raw_sends()
    assert sorted(len(s["destinations"]) for s in sends) == [20, 50, 50]
    assert sorted(d for s in sends for d in s["destinations"]) == members
    by_id = {s["id"]: set(s["destinations"]) for s in sends}
    for recipient, (status, attempts, ses_id) in provider_ids(engines).items():
        assert (status, attempts) == ("delivered", 1)
        assert ses_id is not None and recipient in by_id[ses_id]
    raw = sends[0]["raw_data"]
    assert "Return-Path" not in raw and "forged@elsewhere.test" not in raw
    assert raw.endswith("\r\n\r\nHello.\r\n")  # the body as it came


async def test_throttling_is_deferred_and_retried_to_exactly_one_send(
        ses: MotoServer, store: tuple[StoreRunner, BlobStore], engines: Engines,
        monkeypatch: pytest.MonkeyPatch) -> None:
    runner, blobs = store
    post(runner, blobs, ["only@x.test"])
    with FaultProxy(ses.url, faults=2, path_prefix=SEND_PATH) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        await deliver(runner, blobs, egress())
    assert (proxy.faulted, proxy.hits) == (2, 3)
    assert len(ses.raw_sends()) == 1
    status, attempts, ses_id = provider_ids(engines)["only@x.test"]
    assert (status, attempts, ses_id) == ("delivered", 3, ses.raw_sends()[0]["id"])
    trace = [(kind, detail) for _, kind, detail in runner.repo.message_events("m1")]
    assert trace.count(("deferred", "451 4.4.1 Amazon SES: TooManyRequestsException "
                                    "Maximum sending rate exceeded.")) == 2


async def test_a_server_error_defers_and_a_missing_mail_from_domain_waits_too(
        ses: MotoServer, store: tuple[StoreRunner, BlobStore],
        monkeypatch: pytest.MonkeyPatch) -> None:
    runner, blobs = store
    post(runner, blobs, ["only@x.test"])
    with FaultProxy(ses.url, faults=1, path_prefix=SEND_PATH, status=500,
                    code="InternalFailure", message="oops") as first, \
            FaultProxy(first.url, faults=1, path_prefix=SEND_PATH, status=400,
                       code="MailFromDomainNotVerifiedException",
                       message="MAIL FROM domain not verified") as second:
        monkeypatch.setenv("AWS_ENDPOINT_URL", second.url)
        await deliver(runner, blobs, egress())
    replies = [d for _, kind, d in runner.repo.message_events("m1") if kind == "deferred"]
    assert replies == [
        "451 4.7.1 Amazon SES: MailFromDomainNotVerifiedException MAIL FROM domain not "
        "verified", "451 4.4.1 Amazon SES: InternalFailure oops"]
    assert len(ses.raw_sends()) == 1


async def test_a_message_ses_rejects_fails_at_once(
        ses: MotoServer, store: tuple[StoreRunner, BlobStore], engines: Engines) -> None:
    runner, blobs = store
    post(runner, blobs, ["only@x.test"], sender="poster@unverified.test")
    await deliver(runner, blobs, egress(), until="failed")
    status, attempts, ses_id = provider_ids(engines)["only@x.test"]
    assert (status, attempts, ses_id) == ("failed", 1, None)
    (row,) = runner.repo.list_deliveries(10)
    assert row.last_reply == ("554 5.7.1 Amazon SES refused the message: MessageRejected "
                              "Did not have authority to send from email "
                              "poster@unverified.test")
    assert ses.raw_sends() == []


async def test_sends_are_paced_to_the_rate_get_account_gives(
        ses: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    account = {"SendQuota": {"Max24HourSend": 200.0, "MaxSendRate": 4.0,
                             "SentLast24Hours": 0.0}, "SendingEnabled": True}
    content = b"From: poster@outside.test\r\nSubject: paced\r\n\r\nHello.\r\n"
    with FaultProxy(ses.url, faults=0, answers={"/v2/email/account": account}) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        sender = egress(max_send_rate=0.0)
        await sender.start()
        try:
            started = asyncio.get_running_loop().time()
            # 12 calls at 95 % of 4 a second, the first on the bucket's one token: about
            # 2.9 s; at the 1 a second used while the rate is unknown, 11 s or more.
            replies = await asyncio.gather(*(sender.send("", [f"m{i}@x.test"], content)
                                             for i in range(12)))
            elapsed = asyncio.get_running_loop().time() - started
        finally:
            await sender.close()
    assert {reply.code for (reply,) in replies} == {250}
    assert len(ses.raw_sends()) == 12
    assert (12 - 1) / 3.8 - 0.1 <= elapsed < 8.0


async def test_without_a_region_the_egress_does_not_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    sender = egress()
    with pytest.raises(ConfigurationError, match=r"region.*set AWS_REGION"):
        await sender.start()
    await sender.close()


def test_ses_is_chosen_by_name_or_url() -> None:
    settings = Settings(egress="ses", ses_max_send_rate=5, ses_configuration_set="cs")
    assert settings.egress_url == "ses:"
    options = ProviderOptions(pool_size=1, timeout=1, idle_check=1,
                              ses=SesOptions(configuration_set="cs", max_send_rate=5))
    provider = build_provider("ses:", options)
    assert isinstance(provider, SesEgress)
    assert provider.options.configuration_set == "cs"
    with pytest.raises(ValueError, match="egress URL"):
        Settings(egress="ses:eu-west-1")


HEADER = (b"Return-Path: <bounce@old.example>\r\n"
          b"From: Alice <alice@origin.example>\r\n"
          b"Sender: someone@other.example\r\n"
          b"Message-ID: <one@origin.example>\r\n"
          b"Subject: hi\r\n"
          b"DKIM-Signature: v=1; d=origin.example;\r\n b=first\r\n"
          b"Message-ID: <two@origin.example>\r\n"
          b"DKIM-Signature: v=1; d=provider.example;\r\n b=second\r\n"
          b"Received: from a\r\nReceived: from b\r\n"
          b"X-Kept: yes\r\n\r\n")


def test_fields_ses_refuses_are_taken_out_and_the_body_is_untouched() -> None:
    body = b"Body with Return-Path: in it\r\n"
    ready = ses_ready(HEADER + body, "team-bounces@lists.example")
    assert ready == (b"From: Alice <alice@origin.example>\r\n"
                     b"Message-ID: <one@origin.example>\r\n"
                     b"Subject: hi\r\n"
                     b"DKIM-Signature: v=1; d=origin.example;\r\n b=first\r\n"
                     b"Received: from a\r\nReceived: from b\r\n"
                     b"X-Kept: yes\r\n\r\n" + body)
    # A Sender of the list's own domain (the envelope sender's) or From's stays.
    own = HEADER.replace(b"someone@other.example", b"owner@lists.example")
    assert b"Sender: owner@lists.example" in ses_ready(own, "team-bounces@lists.example")
    clean = b"From: a@b.example\r\nSubject: x\r\n\r\nbody\r\n"
    assert ses_ready(clean, "") is clean


def test_the_token_bucket_paces_to_its_rate_and_refuses_a_wait_behind_too_much_debt(
        ) -> None:
    now = [0.0]
    bucket = TokenBucket(10.0, max_wait=4.0, clock=lambda: now[0])
    assert bucket.reserve(10) == 0.0  # a full bucket: a burst of its rate
    assert bucket.reserve(50) == pytest.approx(5.0)  # larger than max_wait: still goes
    assert bucket.reserve(1) is None  # behind 5 s of debt: refused, nothing taken
    now[0] = 1.5
    assert bucket.reserve(5) == pytest.approx(4.0)  # 3.5 s of debt, then its own 0.5 s
    bucket.set_rate(100.0)
    now[0] = 2.0
    assert bucket.reserve(1) == 0.0  # the 40 owed went in 0.4 s at the new rate


async def test_two_egresses_sharing_the_store_keep_one_send_rate_together(
        ses: MotoServer, store: tuple[StoreRunner, BlobStore], engines: Engines) -> None:
    """Two workers' SES egresses pace from one row of the store (``SesOptions.pace``):
    20 single-recipient sends at 10 a second (a burst of 10) take a second, where two
    buckets of their own would send them all at once."""
    from mailflow.services.send_pace import shared_pace
    from mailflow.store.tables import send_pace

    runner, _ = store
    pace = shared_pace(runner)
    first, second = (egress(max_send_rate=10.0, pace=pace) for _ in range(2))
    for each in (first, second):
        await each.start()
    content = b"From: poster@outside.test\r\nSubject: paced\r\n\r\nHello.\r\n"
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        replies = await asyncio.gather(*(
            each.send("poster@outside.test", [f"r{n}@x.test"], content)
            for n in range(10) for each in (first, second)))
    finally:
        for each in (first, second):
            await each.close()
    elapsed = loop.time() - began
    assert [r.code for [r] in replies] == [250] * 20
    assert elapsed >= 0.9, elapsed
    with engines.reader.connect() as conn:
        assert conn.execute(select(send_pace.c.route)).scalars().all() == ["ses"]
