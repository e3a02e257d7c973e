"""Contract tests of the storage port, one suite over SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mailflow import addresses
from mailflow.blobs import BlobStore, content_hash
from mailflow.errors import Conflict, InvalidInput, NotFound
from mailflow.model import (
    DeliveryStatus,
    InboundMessage,
    Lease,
    ListKind,
    MessageStatus,
    Outcome,
    role_alias,
)
from mailflow.services.commit import IngestBatch, InlineExpansion, store_batch
from mailflow.services.processor import expand_received
from mailflow.store import Engines, Repository
from mailflow.testing.factories import make_list

NOW = 1_800_000_000.0


def store_message(repo: Repository, blobs: BlobStore, rcpt: str,
                  data: bytes = b"Subject: x\r\n\r\nbody\r\n", message_id: str = "m1",
                  now: float = NOW) -> InboundMessage:
    digest = content_hash(data)
    message = InboundMessage(message_id, "poster@outside.test", (rcpt,), digest, len(data), now,
                             "127.0.0.1", "client.test", "ESMTP")
    store_batch(repo, IngestBatch([message]), now, lambda: blobs.write_many([(digest, data)]))
    return message


def expand(repo: Repository, now: float = NOW) -> int:
    return expand_received(repo, now, 100)


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def test_directory_rules(repo: Repository) -> None:
    with pytest.raises(NotFound):
        repo.create_list("team@example.test", ListKind.LIST, "", 0, NOW)
    make_list(repo, "team@example.test", ["a@x.test"])
    with pytest.raises(Conflict):
        repo.add_domain("example.test", NOW)
    with pytest.raises(Conflict):
        repo.create_list("team@example.test", ListKind.LIST, "", 0, NOW)
    with pytest.raises(InvalidInput):
        repo.create_list("team-bounces@example.test", ListKind.LIST, "", 0, NOW)
    with pytest.raises(Conflict):
        repo.remove_domain("example.test")
    assert repo.add_members("team@example.test", ["a@x.test", "b@x.test"], NOW) == (1, 1, 0)
    assert repo.resolve("team@example.test").kind == "list"
    assert repo.resolve("team-bounces@example.test").kind == "bounces"
    assert repo.resolve("nobody@example.test").kind == "unknown_address"
    assert repo.resolve("team@elsewhere.test").kind == "unknown_domain"
    repo.delete_list("team@example.test", NOW)
    repo.remove_domain("example.test")
    assert repo.domains() == []


def test_expansion_is_atomic_and_happens_once(repo: Repository, blobs: BlobStore) -> None:
    make_list(repo, "team@example.test", ["a@x.test", "b@x.test", "c@x.test"])
    store_message(repo, blobs, "team@example.test")
    assert expand(repo) == 1
    assert expand(repo) == 0
    assert repo.delivery_counts()["queued"] == 3
    assert repo.message_counts()["queued"] == 1


def test_claims_are_leased_ordered_and_expire(repo: Repository, blobs: BlobStore) -> None:
    make_list(repo, "low@example.test", ["a@x.test"])
    make_list(repo, "high@example.test", ["b@x.test"], priority=5)
    store_message(repo, blobs, "low@example.test", message_id="m1")
    store_message(repo, blobs, "high@example.test", message_id="m2")
    expand(repo)

    first = repo.claim_due_deliveries(NOW, 1, lease=60, owner="w1")
    assert [d.recipient for d in first] == ["b@x.test"]  # higher priority first
    second = repo.claim_due_deliveries(NOW, 10, lease=60, owner="w1")
    assert [d.recipient for d in second] == ["a@x.test"]
    assert repo.claim_due_deliveries(NOW + 59, 10, lease=60, owner="w2") == []
    # A crashed worker's lease runs out; the delivery is due again.
    again = repo.claim_due_deliveries(NOW + 61, 10, lease=60, owner="w2")
    assert sorted(d.recipient for d in again) == ["a@x.test", "b@x.test"]


def test_outcomes_defer_deliver_fail_and_finish(repo: Repository, blobs: BlobStore) -> None:
    make_list(repo, "team@example.test", ["a@x.test", "b@x.test", "c@x.test"])
    message = store_message(repo, blobs, "team@example.test")
    expand(repo)
    a, b, c = sorted(repo.claim_due_deliveries(NOW, 10, 60, "w"), key=lambda d: d.recipient)
    assert repo.record_outcomes(NOW, [
        Outcome(a.id, DeliveryStatus.DELIVERED, "250 ok", message_id="m1", lease=a.lease_owner),
        Outcome(b.id, DeliveryStatus.DEFERRED, "451 later", due_at=NOW + 100, message_id="m1",
                lease=b.lease_owner),
        Outcome(c.id, DeliveryStatus.FAILED, "550 no", message_id="m1", lease=c.lease_owner),
    ]) == []
    assert repo.next_due_at() == NOW + 100
    assert repo.claim_due_deliveries(NOW + 99, 10, 60, "w") == []
    assert repo.finish_messages(NOW) == 0  # b is still pending
    [retry] = repo.claim_due_deliveries(NOW + 100, 10, 60, "w")
    assert (retry.recipient, retry.attempts) == ("b@x.test", 1)
    repo.record_outcomes(NOW + 100, [Outcome(retry.id, DeliveryStatus.DELIVERED, "250 ok",
                                             lease=retry.lease_owner)])
    assert repo.finish_messages(NOW + 100) == 1
    assert repo.message_counts()[MessageStatus.DONE.value] == 1
    kinds = [kind for _, kind, _ in repo.message_events("m1")]
    assert kinds == ["received", "expanded", "deferred", "failed"]
    # The blob is released, then collected after the retention window.
    path = blobs.path(message.blob)
    assert path.exists()
    assert repo.collect_blobs(NOW + 99, blobs.unlink_many) == 0
    assert repo.collect_blobs(NOW + 100, blobs.unlink_many) == 1
    assert not path.exists()
    assert repo.blob_stats() == (0, 0)


def test_a_body_is_stored_once_and_kept_while_referenced(repo: Repository,
                                                         blobs: BlobStore) -> None:
    make_list(repo, "team@example.test", ["a@x.test"])
    first = store_message(repo, blobs, "team@example.test", message_id="m1")
    store_message(repo, blobs, "team@example.test", message_id="m2")
    assert repo.blob_stats() == (1, first.size)
    expand(repo)
    [d1, d2] = repo.claim_due_deliveries(NOW, 10, 60, "w")
    done = next(d for d in (d1, d2) if d.message_id == "m1")
    repo.record_outcomes(NOW, [Outcome(done.id, DeliveryStatus.DELIVERED, "250",
                                       lease=done.lease_owner)])
    repo.finish_messages(NOW)
    assert repo.collect_blobs(NOW + 1, blobs.unlink_many) == 0  # m2 still needs it
    assert blobs.path(first.blob).exists()


def test_a_body_in_the_database_is_stored_with_the_rows_and_collected_with_them(
        repo: Repository, blobs: BlobStore) -> None:
    make_list(repo, "team@example.test", ["a@x.test"])
    data = b"Subject: x\r\n\r\nin the row\r\n"
    digest = content_hash(data)
    message = InboundMessage("m1", "poster@outside.test", ("team@example.test",), digest,
                             len(data), NOW, "127.0.0.1", "client.test", "ESMTP")
    # No file is written: the transaction carries the body.
    store_batch(repo, IngestBatch([message], bodies={digest: data}), NOW, lambda: None)
    assert not blobs.path(digest).exists()
    assert repo.stored_body(digest) == data
    assert repo.blob_stats() == (1, len(data))
    # The same content arriving again as a file-backed blob keeps the row's copy.
    second = InboundMessage("m2", *[getattr(message, f) for f in
                                    ("mail_from", "rcpt_tos", "blob", "size", "received_at",
                                     "peer", "helo", "protocol")])
    store_batch(repo, IngestBatch([second]), NOW, lambda: None)
    assert repo.stored_body(digest) == data
    expand(repo)
    repo.record_outcomes(NOW, [Outcome(d.id, DeliveryStatus.DELIVERED, "250", lease=d.lease_owner)
                               for d in repo.claim_due_deliveries(NOW, 10, 60, "w")])
    assert repo.finish_messages(NOW) == 2
    assert repo.collect_blobs(NOW + 1, blobs.unlink_many) == 1
    assert repo.stored_body(digest) is None
    assert repo.blob_stats() == (0, 0)


def test_release_leases_returns_in_flight_work(repo: Repository, blobs: BlobStore) -> None:
    make_list(repo, "team@example.test", ["a@x.test", "b@x.test"])
    store_message(repo, blobs, "team@example.test")
    expand(repo)
    repo.claim_due_deliveries(NOW, 1, 300, "dead-worker")
    repo.claim_due_deliveries(NOW, 1, 300, "live-worker")
    assert repo.release_leases(NOW, owner="dead-worker") == 1
    assert repo.delivery_counts()["in_flight"] == 1
    assert repo.release_leases(NOW) == 1
    assert len(repo.claim_due_deliveries(NOW, 10, 300, "w")) == 2


def test_an_outcome_is_recorded_only_under_its_own_lease(repo: Repository,
                                                         blobs: BlobStore) -> None:
    """A sender whose lease ran out and was claimed again must not overwrite the new
    holder's delivery: its outcome is returned as stale, and nothing of it is written."""
    make_list(repo, "team@example.test", ["a@x.test", "b@x.test", "c@x.test"])
    store_message(repo, blobs, "team@example.test")
    expand(repo)
    old = sorted(repo.claim_due_deliveries(NOW, 10, 60, "w1/1"), key=lambda d: d.recipient)
    assert {d.lease_owner for d in old} == {"w1/1"}
    new = sorted(repo.claim_due_deliveries(NOW + 61, 10, 60, "w2/1"),  # expired: again
                 key=lambda d: d.recipient)
    assert [d.id for d in new] == [d.id for d in old]
    a, b, c = old

    late = [Outcome(a.id, DeliveryStatus.DELIVERED, "250 ok", lease=a.lease_owner),
            Outcome(b.id, DeliveryStatus.DEFERRED, "451 later", due_at=NOW + 99,
                    lease=b.lease_owner),
            Outcome(c.id, DeliveryStatus.QUEUED, "451 4.4.1 busy", due_at=NOW + 99,
                    lease=c.lease_owner)]  # a hand-back
    assert repo.record_outcomes(NOW + 62, late) == late
    rows = {r.recipient: r for r in repo.list_deliveries(10)}
    assert {r.status for r in rows.values()} == {"in_flight"}
    assert {r.attempts for r in rows.values()} == {0}
    assert [kind for _, kind, _ in repo.message_events("m1")] == ["received", "expanded"]

    # The holder's outcomes apply, in the same batch as a stale one.
    na, nb, _ = new
    mixed = [Outcome(na.id, DeliveryStatus.DELIVERED, "250 ok", lease=na.lease_owner),
             Outcome(nb.id, DeliveryStatus.FAILED, "550 no", lease=nb.lease_owner),
             Outcome(nb.id, DeliveryStatus.DELIVERED, "250 ok", lease=b.lease_owner)]
    assert repo.record_outcomes(NOW + 63, mixed) == mixed[2:]
    rows = {r.recipient: r for r in repo.list_deliveries(10)}
    assert [(rows[r].status, rows[r].attempts) for r in ("a@x.test", "b@x.test")] == [
        ("delivered", 1), ("failed", 1)]
    # Written once: the same outcome again finds the delivery no longer in flight (it is
    # not reported as stale: the row shows it applied, as it was).
    repo.record_outcomes(NOW + 64, mixed[:1])
    assert {r.recipient: r.attempts for r in repo.list_deliveries(10)}["a@x.test"] == 1


def test_renewed_leases_outlive_their_first_term_and_a_lost_one_is_reported(
        repo: Repository, blobs: BlobStore) -> None:
    make_list(repo, "team@example.test", ["a@x.test", "b@x.test"])
    store_message(repo, blobs, "team@example.test")
    expand(repo)
    a, b = repo.claim_due_deliveries(NOW, 10, 60, "w_1/1")
    held = [(a.id, a.lease_owner), (b.id, b.lease_owner)]
    assert repo.renew_leases(NOW + 50, NOW + 110, held) == []
    assert repo.claim_due_deliveries(NOW + 61, 10, 60, "w2/1") == []  # still held
    assert repo.renew_leases(NOW + 60, NOW + 120, [(a.id, "w2/9")]) == [a.id]  # not its own
    [taken] = repo.claim_due_deliveries(NOW + 111, 1, 60, "w2/1")  # b's term ran out
    assert repo.renew_leases(NOW + 112, NOW + 172, held) == [taken.id]
    # An owner's tokens are released together; LIKE's wildcards in the name match nothing.
    assert repo.release_leases(NOW, owner="wx1") == 0
    assert repo.release_leases(NOW, owner="w_1") == 1
    assert repo.delivery_counts()["in_flight"] == 1


def test_concurrent_claims_never_hand_out_a_delivery_twice(repo: Repository,
                                                            blobs: BlobStore) -> None:
    members = [f"m{i}@x.test" for i in range(400)]
    make_list(repo, "team@example.test", members)
    store_message(repo, blobs, "team@example.test")
    expand(repo)
    claimed: list[list[int]] = [[] for _ in range(4)]

    def worker(index: int) -> None:
        for _ in range(50):
            batch = repo.claim_due_deliveries(NOW, 25, 300, f"w{index}")
            if not batch:
                return
            claimed[index].extend(d.id for d in batch)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    ids = [i for batch in claimed for i in batch]
    assert len(ids) == len(set(ids)) == len(members)


def test_deleting_a_list_fails_its_pending_deliveries(repo: Repository,
                                                      blobs: BlobStore) -> None:
    make_list(repo, "team@example.test", ["a@x.test"])
    store_message(repo, blobs, "team@example.test")
    expand(repo)
    assert repo.delete_list("team@example.test", NOW) == 1
    assert repo.delivery_counts()["failed"] == 1
    assert repo.claim_due_deliveries(NOW, 10, 60, "w") == []


def test_small_posts_are_expanded_in_the_ingest_transaction(repo: Repository,
                                                            blobs: BlobStore) -> None:
    make_list(repo, "small@example.test", ["a@x.test", "b@x.test"])
    make_list(repo, "big@example.test", [f"m{i}@x.test" for i in range(10)])
    batch = []
    for number, rcpt in enumerate(["big@example.test", "small@example.test"]):
        data = f"Subject: {number}\r\n\r\nbody\r\n".encode()
        batch.append((InboundMessage(f"m{number}", "p@outside.test", (rcpt,),
                                     content_hash(data), len(data), NOW, "", "", "ESMTP"), data))
    stored = store_batch(repo, IngestBatch([m for m, _ in batch]), NOW,
                         lambda: blobs.write_many([(m.blob, d) for m, d in batch]),
                         InlineExpansion(max_rows=5))
    assert (stored.left, stored.queued, stored.leased) == (1, 2, [])
    # the big list waits for the processor, the small one is queued
    assert repo.message_counts() == {"received": 1, "held": 0, "queued": 1, "done": 0}
    assert repo.delivery_counts()["queued"] == 2
    assert expand(repo) == 1
    assert repo.delivery_counts()["queued"] == 12



def test_ingest_can_lease_fresh_deliveries_to_the_local_scheduler(repo: Repository,
                                                                   blobs: BlobStore) -> None:
    make_list(repo, "team@example.test", ["a@x.test", "b@x.test", "c@x.test"])
    make_list(repo, "other@example.test", ["d@x.test"])
    first, ensure_first = _one("other@example.test", "m0", blobs)
    store_batch(repo, IngestBatch(first), NOW, ensure_first, InlineExpansion(10))
    messages, ensure = _one("team@example.test", "m1", blobs)
    stored = store_batch(repo, IngestBatch(messages, lease=Lease("node-a", 60, limit=2)), NOW,
                         ensure, InlineExpansion(10))
    assert (stored.left, stored.queued) == (0, 1)
    assert sorted(d.recipient for d in stored.leased) == ["a@x.test", "b@x.test"]
    assert len({d.id for d in stored.leased}) == 2
    assert {d.lease_owner for d in stored.leased} == {"node-a"}
    # Leased exactly as a claim leases: another claimer only gets what is still queued.
    claimed = repo.claim_due_deliveries(NOW, 100, 60, "node-b")
    assert sorted(d.recipient for d in claimed) == ["c@x.test", "d@x.test"]
    assert repo.record_outcomes(NOW + 1, [
        Outcome(d.id, DeliveryStatus.DELIVERED, "250 ok", lease=d.lease_owner)
        for d in stored.leased]) == []
    assert repo.delivery_counts()["delivered"] == 2
    assert len(repo.claim_due_deliveries(NOW + 61, 100, 60, "node-b")) == 2  # c, d expired


def _one(rcpt: str, message_id: str, blobs: BlobStore):  # type: ignore[no-untyped-def]
    data = f"Subject: {message_id}\r\n\r\nbody\r\n".encode()
    message = InboundMessage(message_id, "p@outside.test", (rcpt,), content_hash(data),
                             len(data), NOW, "", "", "ESMTP")
    return [message], lambda: blobs.write_many([(message.blob, data)])

def test_a_torn_blob_left_by_a_crash_is_written_again(tmp_path: Path) -> None:
    """Files are renamed into place before the sync, so a crash can leave a torn one."""
    data = b"Subject: x\r\n\r\n" + b"body line\r\n" * 100
    digest = content_hash(data)
    first = BlobStore(tmp_path / "blobs")
    first.write_many([(digest, data)])
    path = first.path(digest)
    path.write_bytes(data[:7])  # what a power cut between rename and sync can leave

    restarted = BlobStore(tmp_path / "blobs")  # a new process knows nothing durable
    restarted.write_many([(digest, data)])
    assert path.read_bytes() == data

    inode = path.stat().st_ino
    BlobStore(tmp_path / "blobs").write_many([(digest, data)])  # intact: kept as it is
    assert path.stat().st_ino == inode
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_the_known_head_revision_is_alembics() -> None:
    """``migrate.HEAD`` lets a current database skip importing Alembic: keep it true."""
    from alembic.script import ScriptDirectory

    from mailflow.store.migrate import HEAD, alembic_config

    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD


def test_a_database_from_before_bodies_in_rows_is_upgraded_in_place(database_url: str
                                                                     ) -> None:
    from sqlalchemy import text

    from mailflow.store import create_engines, upgrade_to_head
    from mailflow.store.migrate import HEAD, current_revision, upgrade

    engines = create_engines(database_url, pool_size=1)
    try:
        upgrade(engines.writer, "0001")
        with engines.writer.begin() as conn:
            conn.execute(text("INSERT INTO blobs (hash, size, refcount, created_at) "
                              "VALUES ('old', 3, 1, 0)"))
        assert current_revision(engines.writer) == "0001"
        upgrade_to_head(engines.writer)
        assert current_revision(engines.writer) == HEAD
        repo = Repository(engines)
        assert repo.blob_stats() == (1, 3)
        assert repo.stored_body("old") is None  # an old blob is a file
    finally:
        engines.dispose()


def test_role_addresses_are_an_alias_to_the_configured_target(engines: Engines,
                                                              blobs: BlobStore) -> None:
    """postmaster@ every served domain (and bare ``postmaster``, RFC 5321 4.5.1) and
    abuse@ resolve to the role alias when set, and expand to its one target."""
    roles = {"postmaster": "ops@elsewhere.test", "abuse": "abuse-desk@elsewhere.test"}
    repo = Repository(engines, roles)
    make_list(repo, "team@example.test", ["a@x.test"])
    repo.add_domain("other.test", NOW)
    for address in ("postmaster@example.test", "postmaster@other.test", "postmaster"):
        resolution = repo.resolve(address)
        assert (resolution.kind, resolution.mailing_list) == ("list", role_alias("postmaster"))
    assert repo.resolve("abuse@other.test").mailing_list == role_alias("abuse")
    assert repo.resolve("postmaster@elsewhere.test").kind == "unknown_domain"
    assert repo.resolve("abuse").kind == "unknown_domain"  # only postmaster goes bare
    assert repo.resolve("hostmaster@example.test").kind == "unknown_address"

    store_message(repo, blobs, "postmaster@other.test", message_id="m1")
    store_message(repo, blobs, "abuse@example.test", message_id="m2")
    store_message(repo, blobs, "postmaster", message_id="m3")
    expand(repo)
    claimed = repo.claim_due_deliveries(NOW, 10, 60, "w")
    assert sorted((d.message_id, d.recipient) for d in claimed) == [
        ("m1", "ops@elsewhere.test"), ("m2", "abuse-desk@elsewhere.test"),
        ("m3", "ops@elsewhere.test")]
    _, lists_by_id = repo.delivery_context(set(), {d.list_id for d in claimed})
    assert set(lists_by_id.values()) == {role_alias("postmaster"), role_alias("abuse")}
    assert role_alias("postmaster").bounces_address == ""  # sent with the null sender
    assert {r.list_address for r in repo.list_deliveries(10)} == {"postmaster", "abuse"}


def test_role_addresses_without_a_setting_stay_refused_and_a_list_of_that_name_wins(
        engines: Engines, blobs: BlobStore) -> None:
    repo = Repository(engines, {"postmaster": "ops@elsewhere.test"})
    make_list(repo, "team@example.test", ["a@x.test"])
    assert Repository(engines).resolve("postmaster@example.test").kind == "unknown_address"
    assert Repository(engines).resolve("postmaster").kind == "unknown_domain"
    assert repo.resolve("abuse@example.test").kind == "unknown_address"
    # An operator's own list or alias of a role address is that address's, as any other.
    mine = repo.create_list("postmaster@example.test", ListKind.ALIAS, "", 0, NOW)
    repo.add_members(mine.address, ["me@x.test"], NOW)
    assert repo.resolve("postmaster@example.test").mailing_list == mine
    # A role alias whose setting went away before expansion expands to nobody.
    store_message(repo, blobs, "postmaster")
    assert Repository(engines, {}).resolve("postmaster").kind == "unknown_domain"
    expand_received(Repository(engines, {}), NOW, 100)
    assert repo.delivery_counts()["queued"] == 0


def test_addresses_stored_with_a_unicode_domain_are_rewritten_in_a_labels(database_url: str
                                                                          ) -> None:
    """Before 0003 a non-ASCII local part kept its domain in Unicode; the lookup now
    uses A-labels, so such a list would be unreachable without the rewrite."""
    from sqlalchemy import text

    from mailflow.store import create_engines, upgrade_to_head
    from mailflow.store.migrate import upgrade

    engines = create_engines(database_url, pool_size=1)
    try:
        upgrade(engines.writer, "0002")
        with engines.writer.begin() as conn:
            conn.execute(text("INSERT INTO domains (id, name, created_at) "
                              "VALUES (1, 'xn--ncode-cta3g.example', 0)"))
            conn.execute(text("INSERT INTO lists (id, domain_id, address, kind, name, "
                              "priority, created_at) VALUES (1, 1, 'ünï@ünïcode.example', "
                              "'list', '', 0, 0)"))
            conn.execute(text(
                "INSERT INTO members (list_id, address, status, created_at) VALUES "
                "(1, 'émile@ünïcode.example', 'active', 0), "
                "(1, 'zoë@xn--ncode-cta3g.example', 'active', 0), "
                "(1, 'zoë@ünïcode.example', 'active', 0), (1, 'ann@x.test', 'active', 0)"))
        upgrade_to_head(engines.writer)
        repo = Repository(engines)
        assert repo.resolve(addresses.canonical("ünï@ÜNÏCODE.example")).kind == "list"
        assert sorted(m.address for m in repo.members("ünï@xn--ncode-cta3g.example")) == [
            "ann@x.test", "zoë@xn--ncode-cta3g.example", "émile@xn--ncode-cta3g.example"]
        # 0004: the members there are have no display name
        assert {m.name for m in repo.members("ünï@xn--ncode-cta3g.example")} == {""}
    finally:
        engines.dispose()
