"""Operator storage operations on SQLite and PostgreSQL: queue actions on a fixture queue
(safe against deliveries in flight) and the message trace's look-ups."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailflow.blobs import BlobStore, content_hash
from mailflow.errors import InvalidInput
from mailflow.ids import new_message_id
from mailflow.model import DeliveryStatus, InboundMessage, Outcome, QueueSelection
from mailflow.services.commit import IngestBatch, store_batch
from mailflow.services.processor import expand_received
from mailflow.services.queue_operations import QueueOperations
from mailflow.services.timespec import parse_duration, parse_moment
from mailflow.services.trace import TraceService
from mailflow.store import Repository
from mailflow.store.operations import OperationsStore
from mailflow.testing.factories import make_list

NOW = 1_800_000_000.0
HOUR = 3600.0


def store(repo: Repository, blobs: BlobStore, rcpt: str, at: float, *,
          sender: str = "poster@outside.test", header_id: str = "") -> str:
    data = f"Message-ID: {header_id}\r\nSubject: x\r\n\r\nbody {at}\r\n".encode()
    digest = content_hash(data)
    message = InboundMessage(new_message_id(at), sender, (rcpt,), digest, len(data), at,
                             "192.0.2.7", "client.test", "ESMTP", header_id=header_id)
    store_batch(repo, IngestBatch([message]), at, lambda: blobs.write_many([(digest, data)]))
    expand_received(repo, at, 100)
    return message.id


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


@pytest.fixture
def queue(repo: Repository, blobs: BlobStore) -> dict[str, str]:
    """Two lists; an old post to one (three members, two domains), a new post to the other."""
    make_list(repo, "old@example.test", ["a@x.test", "b@x.test", "c@y.test"])
    make_list(repo, "new@example.test", ["d@x.test"])
    return {"old": store(repo, blobs, "old@example.test", NOW - 2 * HOUR),
            "new": store(repo, blobs, "new@example.test", NOW)}


def operations(repo: Repository, now: float = NOW) -> QueueOperations:
    return QueueOperations(OperationsStore(repo.engines), lambda: now)


def statuses(repo: Repository) -> dict[str, str]:
    return {r.recipient: r.status for r in repo.list_deliveries(100)}


def test_hold_skips_in_flight_then_release_makes_them_due_again(
        repo: Repository, queue: dict[str, str]) -> None:
    [in_flight] = repo.claim_due_deliveries(NOW, 1, 60, "w")  # one of the old post's
    ops = operations(repo)
    change = ops.hold(QueueSelection(list_address="old@example.test"))
    assert (change.changed, change.skipped) == (2, 1)
    held = {r for r, s in statuses(repo).items() if s == "held"}
    assert in_flight.recipient not in held and len(held) == 2
    # The sender's outcome still applies under its lease.
    assert repo.record_outcomes(NOW, [Outcome(in_flight.id, DeliveryStatus.DELIVERED, "250 ok",
                                              lease=in_flight.lease_owner)]) == []
    # Held deliveries are never claimed, and keep their message unfinished.
    assert {d.recipient for d in repo.claim_due_deliveries(NOW + HOUR, 10, 60, "w")} \
        == {"d@x.test"}
    repo.finish_messages(NOW + HOUR)
    assert repo.message_counts()["done"] == 0
    change = operations(repo, NOW + HOUR).release(QueueSelection(statuses=(
        DeliveryStatus.HELD,)))
    assert (change.changed, change.skipped) == (2, 0)
    assert {d.recipient for d in repo.claim_due_deliveries(NOW + HOUR, 10, 60, "w")} == held
    kinds = [k for _, k, _ in repo.message_events(queue["old"])]
    assert kinds.count("hold") == 1 and kinds.count("release") == 1


def test_retry_makes_a_deferred_delivery_due_now(repo: Repository,
                                                 queue: dict[str, str]) -> None:
    claimed = repo.claim_due_deliveries(NOW, 10, 60, "w")
    repo.record_outcomes(NOW, [Outcome(d.id, DeliveryStatus.DEFERRED, "451 later",
                                       due_at=NOW + 10 * HOUR, lease=d.lease_owner)
                               for d in claimed])
    assert repo.claim_due_deliveries(NOW + 1, 10, 60, "w") == []
    change = operations(repo, NOW + 1).retry(QueueSelection(domain="Y.test"))
    assert (change.changed, change.skipped) == (1, 0)
    assert [d.recipient for d in repo.claim_due_deliveries(NOW + 1, 10, 60, "w")] \
        == ["c@y.test"]


def test_delete_by_age_and_ids_finishes_the_message(repo: Repository,
                                                    queue: dict[str, str]) -> None:
    ops = operations(repo)
    older = QueueSelection(created_before=NOW - parse_duration("1h"))
    assert ops.count(older) == 3
    change = ops.delete(older)
    assert (change.changed, change.skipped) == (3, 0)
    assert statuses(repo) == {"a@x.test": "deleted", "b@x.test": "deleted",
                              "c@y.test": "deleted", "d@x.test": "queued"}
    assert repo.finish_messages(NOW) == 1
    [row] = ops.show(QueueSelection(queue_ids=(queue["new"],)), 10)
    change = ops.delete(QueueSelection(ids=(row.id,)))
    assert change.changed == 1 and repo.delivery_counts()["queued"] == 0
    # Deleted is final: nothing to release, retry or delete again.
    assert ops.retry(QueueSelection(ids=(row.id,))).changed == 0


def test_an_action_needs_a_selection(repo: Repository) -> None:
    with pytest.raises(InvalidInput, match="no deliveries selected"):
        operations(repo).delete(QueueSelection())


def test_trace_finds_messages_by_queue_id_message_id_and_address(
        repo: Repository, blobs: BlobStore) -> None:
    make_list(repo, "team@example.test", ["ann@members.test", "bob@members.test"])
    first = store(repo, blobs, "team@example.test", NOW - 2 * HOUR,
                  header_id="<one@outside.test>")
    second = store(repo, blobs, "team@example.test", NOW, sender="Carol@Outside.test",
                   header_id="<two@outside.test>")
    service = TraceService(OperationsStore(repo.engines))

    def found(query: str, **kwargs: float) -> list[str]:
        return [t.message.id for t in service.trace(query, **kwargs).traces]

    assert found(first) == [first]
    assert found("one@outside.test") == [first]
    assert found("<two@outside.test>") == [second]
    assert found("carol@outside.test") == [second]
    assert found("bob@members.test") == [second, first]
    assert found("team@example.test", since=NOW - HOUR) == [second]
    assert found("team@example.test", until=NOW - HOUR) == [first]
    assert found("nobody@members.test") == []
    result = service.trace("team@example.test", limit=1)
    assert result.truncated and [t.message.id for t in result.traces] == [second]
    [trace] = service.trace(first).traces
    assert [s.kind for s in trace.steps] == ["received", "expanded"]
    assert "peer=192.0.2.7" in trace.steps[0].detail
    assert {d.recipient for d in trace.deliveries} == {"ann@members.test", "bob@members.test"}


def test_moments_and_durations() -> None:
    assert parse_duration("90") == 90 and parse_duration("2h") == 7200
    assert parse_moment("1d", NOW) == NOW - 86400
    assert parse_moment("2027-01-15T08:00", NOW) == datetime(2027, 1, 15, 8,
                                                             tzinfo=UTC).timestamp()
    with pytest.raises(InvalidInput, match="invalid duration"):
        parse_duration("soon")
