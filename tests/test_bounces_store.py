"""Bounce processing in the store, on SQLite and PostgreSQL: VERP addresses resolve to
their list, bounces are counted against members, disabled members are warned and
removed by the periodic pass, 5xx replies count, complaints unsubscribe and suppress,
and suppressed addresses get no delivery."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailflow.blobs import BlobStore, content_hash
from mailflow.bounce_score import DAY, BouncePolicy
from mailflow.errors import NotFound
from mailflow.model import (
    BounceKind,
    BounceReport,
    BounceSource,
    DeliveryStatus,
    InboundMessage,
    Member,
    MemberStatus,
    Outcome,
    Suppression,
)
from mailflow.services.bounce_upkeep import bounce_upkeep
from mailflow.services.commit import IngestBatch, store_batch
from mailflow.services.processor import expand_received
from mailflow.store import Engines, Repository
from mailflow.testing.factories import make_list
from mailflow.verp import Verp

NOW = 1_800_000_000.0 - 1_800_000_000.0 % DAY + 3600  # early in a UTC day
DATA = Path(__file__).parent / "data" / "bounces"
TEAM = "team@example.test"
VERP = Verp("store-secret")


@pytest.fixture
def verp_repo(engines: Engines) -> Repository:
    return Repository(engines, {}, VERP)


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def deliver(repo: Repository, blobs: BlobStore, rcpt: str, data: bytes, message_id: str,
            now: float = NOW, sender: str = "") -> None:
    """Store a message and run the processing chain over it."""
    digest = content_hash(data)
    message = InboundMessage(message_id, sender, (rcpt,), digest, len(data), now, "127.0.0.1",
                             "mx.test", "ESMTP")
    store_batch(repo, IngestBatch([message]), now, lambda: blobs.write_many([(digest, data)]))
    assert expand_received(repo, now, 100, read_file=blobs.read) == 1


def member(repo: Repository, address: str, list_address: str = TEAM) -> Member:
    return next(m for m in repo.members(list_address) if m.address == address)


def test_a_bounce_to_a_verp_address_counts_against_the_member_it_names(
        verp_repo: Repository, blobs: BlobStore) -> None:
    repo = verp_repo
    make_list(repo, TEAM, ["alice@example.net", "zed@example.net"])
    repo.update_list(TEAM, personalize=True)
    address = VERP.sender(TEAM, "zed@example.net")
    resolution = repo.resolve(address)
    assert (resolution.kind, resolution.mailing_list.address, resolution.detail) == (
        "bounces", TEAM, address.split("+")[1].split("@")[0])
    # The bounce names alice; the token names zed, and wins.
    deliver(repo, blobs, address, (DATA / "dsn_postfix_failed.eml").read_bytes(), "b1")
    zed = member(repo, "zed@example.net")
    assert (zed.bounce_score, zed.last_bounce_at) == (1.0, NOW)
    assert member(repo, "alice@example.net").bounce_score == 0
    [event] = repo.bounce_events(TEAM)
    assert (event.address, event.kind, event.source, event.counted) == (
        "zed@example.net", "permanent", "verp", True)
    assert repo.delivery_counts()["queued"] == 0  # consumed, nothing sent


def test_a_plain_bounce_is_parsed_and_a_stranger_named_in_it_is_not_counted(
        repo: Repository, blobs: BlobStore) -> None:
    make_list(repo, TEAM, ["alice@example.net"])
    deliver(repo, blobs, "team-bounces@example.test",
            (DATA / "dsn_postfix_failed.eml").read_bytes(), "b1")
    deliver(repo, blobs, "team-bounces@example.test", (DATA / "exim.eml").read_bytes(), "b2")
    assert member(repo, "alice@example.net").bounce_score == 1
    assert [(e.address, e.source) for e in repo.bounce_events()] == [
        ("alice@example.net", "dsn")]


def test_disabled_at_the_threshold_then_warned_three_times_and_removed(
        repo: Repository, blobs: BlobStore) -> None:
    make_list(repo, TEAM, ["alice@example.net", "bob@example.net"])
    repo.update_list(TEAM, bounce_threshold=2)
    report = BounceReport(repo.get_list(TEAM).id, "alice@example.net", BounceKind.PERMANENT,
                          BounceSource.DSN)
    repo.count_bounces([report], NOW)
    assert [e.kind for e in repo.count_bounces([report], NOW + 60)] == []  # same day
    [disabled] = repo.count_bounces([report], NOW + DAY)
    assert disabled.kind == "disabled"
    assert member(repo, "alice@example.net").status is MemberStatus.DISABLED
    with repo.expansion_transaction() as tx:  # a disabled member gets no copy
        assert tx.directory.active_member_addresses(report.list_id) == ["bob@example.net"]
    repo.add_members(TEAM, ["alice@example.net"], NOW)  # adding again keeps the status
    assert member(repo, "alice@example.net").status is MemberStatus.DISABLED
    policy = BouncePolicy(warnings=3)
    now = NOW + DAY
    assert bounce_upkeep(repo, now, policy, "owner@example.org") == 2  # warning + owners
    recipients = sorted(r.recipient for r in repo.list_deliveries(100))
    assert recipients == ["alice@example.net", "owner@example.org"]
    assert bounce_upkeep(repo, now + 6 * DAY, policy, "owner@example.org") == 0
    assert bounce_upkeep(repo, now + 7 * DAY, policy, "owner@example.org") == 1
    assert bounce_upkeep(repo, now + 14 * DAY, policy, "owner@example.org") == 1
    assert member(repo, "alice@example.net").status is MemberStatus.DISABLED
    assert bounce_upkeep(repo, now + 20 * DAY, policy, "owner@example.org") == 0
    bounce_upkeep(repo, now + 21 * DAY, policy, "owner@example.org")
    assert [m.address for m in repo.members(TEAM)] == ["bob@example.net"]
    assert sorted(r.recipient for r in repo.list_deliveries(100)).count(
        "alice@example.net") == 3


def test_a_score_resets_after_a_week_without_bounces(repo: Repository) -> None:
    make_list(repo, TEAM, ["alice@example.net"])
    list_id = repo.get_list(TEAM).id
    repo.count_bounces([BounceReport(list_id, "alice@example.net", BounceKind.TEMPORARY,
                                     BounceSource.DSN)], NOW)
    assert member(repo, "alice@example.net").bounce_score == 0.5
    bounce_upkeep(repo, NOW + 6 * DAY, BouncePolicy(), "")
    assert member(repo, "alice@example.net").bounce_score == 0.5
    bounce_upkeep(repo, NOW + 7 * DAY, BouncePolicy(), "")
    assert member(repo, "alice@example.net").bounce_score == 0


def test_a_5xx_reply_at_delivery_counts_and_a_4xx_does_not(repo: Repository,
                                                           blobs: BlobStore) -> None:
    make_list(repo, TEAM, ["alice@example.net", "bob@example.net"])
    deliver(repo, blobs, TEAM, b"Subject: x\r\n\r\nbody\r\n", "m1", sender="p@outside.test")
    claimed = {d.recipient: d for d in repo.claim_due_deliveries(NOW, 10, 60, "w")}
    alice, bob = claimed["alice@example.net"], claimed["bob@example.net"]
    repo.record_outcomes(NOW, [
        Outcome(alice.id, DeliveryStatus.FAILED, "550 5.1.1 no such user", message_id="m1",
                lease=alice.lease_owner),
        Outcome(bob.id, DeliveryStatus.FAILED, "451 4.4.1 gave up", message_id="m1",
                lease=bob.lease_owner)])
    assert member(repo, "alice@example.net").bounce_score == 1
    assert member(repo, "bob@example.net").bounce_score == 0
    [event] = repo.bounce_events(TEAM)
    assert (event.source, event.detail) == ("delivery", "550 5.1.1 no such user")


def test_a_complaint_unsubscribes_and_suppresses(repo: Repository, blobs: BlobStore) -> None:
    make_list(repo, TEAM, ["kim@hotmail.example", "bob@example.net"])
    deliver(repo, blobs, "team-bounces@example.test",
            (DATA / "arf_complaint.eml").read_bytes(), "c1")
    assert member(repo, "kim@hotmail.example").status is MemberStatus.UNSUBSCRIBED
    assert [(s.address, s.target) for s in repo.suppressions()] == [
        ("kim@hotmail.example", TEAM)]
    with repo.expansion_transaction() as tx:
        assert tx.directory.active_member_addresses(repo.get_list(TEAM).id) == [
            "bob@example.net"]


def test_suppressed_addresses_get_no_delivery_globally_or_per_list(
        repo: Repository, blobs: BlobStore) -> None:
    make_list(repo, TEAM, ["a@x.test", "b@x.test", "c@x.test"])
    make_list(repo, "other@example.test", ["a@x.test", "b@x.test"])
    assert repo.add_suppression(Suppression("a@x.test", "", "asked", NOW))
    assert not repo.add_suppression(Suppression("a@x.test", "", "again", NOW))
    assert repo.add_suppression(Suppression("b@x.test", TEAM, "", NOW))
    with pytest.raises(NotFound):
        repo.add_suppression(Suppression("b@x.test", "nolist@example.test", "", NOW))
    deliver(repo, blobs, TEAM, b"Subject: x\r\n\r\nbody\r\n", "m1", sender="p@outside.test")
    deliver(repo, blobs, "other@example.test", b"Subject: y\r\n\r\nbody\r\n", "m2",
            sender="p@outside.test")
    sent = sorted((r.message_id, r.recipient) for r in repo.list_deliveries(100))
    assert sent == [("m1", "c@x.test"), ("m2", "b@x.test")]
    repo.remove_suppression("a@x.test", "")
    with pytest.raises(NotFound):
        repo.remove_suppression("a@x.test", "")
    assert [(s.address, s.target) for s in repo.suppressions()] == [("b@x.test", TEAM)]
    repo.delete_list(TEAM, NOW)
    assert repo.suppressions() == []


def test_enabling_a_member_again_clears_its_bounce_record(repo: Repository) -> None:
    make_list(repo, TEAM, ["alice@example.net", "bob@example.net"])
    repo.update_list(TEAM, bounce_threshold=1)
    list_id = repo.get_list(TEAM).id
    repo.count_bounces([BounceReport(list_id, "alice@example.net", BounceKind.PERMANENT,
                                     BounceSource.DSN)], NOW)
    assert member(repo, "alice@example.net").status is MemberStatus.DISABLED
    assert repo.enable_members(TEAM, ["alice@example.net", "bob@example.net"]) == 1
    alice = member(repo, "alice@example.net")
    assert (alice.status, alice.bounce_score, alice.last_bounce_at) == (
        MemberStatus.ACTIVE, 0.0, None)
    assert bounce_upkeep(repo, NOW + 30 * DAY, BouncePolicy(), "o@example.org") == 0
