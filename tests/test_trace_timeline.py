"""The web UI's trace timelines, from the trace service's own query on a real store
(SQLite and PostgreSQL): phases and final states, and what a list owner may see."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailflow.blobs import BlobStore, content_hash
from mailflow.ids import new_message_id
from mailflow.model import DeliveryStatus, InboundMessage, ListRole, Outcome, TokenScope
from mailflow.services.access import Principal
from mailflow.services.commit import IngestBatch, store_batch
from mailflow.services.processor import expand_received
from mailflow.services.trace import TraceService
from mailflow.store import Repository
from mailflow.store.operations import OperationsStore
from mailflow.testing.factories import make_list
from mailflow.web.ui.trace_timeline import timelines

NOW = 1_800_000_000.0
ADMIN = Principal("admin@site.test", True, TokenScope.WRITE)
OWNER = Principal("owner@site.test", False, TokenScope.WRITE,
                  roles={"one@example.test": ListRole.OWNER})
STRANGER = Principal("nobody@site.test", False, TokenScope.WRITE,
                     roles={"other@example.test": ListRole.OWNER})


@pytest.fixture
def cross_post(repo: Repository, tmp_path: Path) -> str:
    """A post to two lists; of list one's members one is delivered, one deferred, one
    failed; list two's member is still queued."""
    make_list(repo, "one@example.test", ["ann@x.test", "bob@x.test", "cy@y.test"])
    make_list(repo, "two@example.test", ["secret-member@z.test"])
    data = b"Message-ID: <post-1@outside.test>\r\nSubject: x\r\n\r\nbody\r\n"
    digest = content_hash(data)
    message = InboundMessage(new_message_id(NOW), "poster@outside.test",
                             ("one@example.test", "two@example.test"), digest, len(data),
                             NOW, "192.0.2.7", "client.test", "ESMTP",
                             header_id="<post-1@outside.test>")
    blobs = BlobStore(tmp_path / "blobs")
    store_batch(repo, IngestBatch([message]), NOW, lambda: blobs.write_many([(digest, data)]))
    expand_received(repo, NOW, 100)
    claimed = {d.recipient: d for d in repo.claim_due_deliveries(NOW + 1, 10, 60, "w")}
    replies = {"ann@x.test": (DeliveryStatus.DELIVERED, "250 2.0.0 queued as A1"),
               "bob@x.test": (DeliveryStatus.DEFERRED, "451 4.7.1 greylisted"),
               "cy@y.test": (DeliveryStatus.FAILED, "550 5.1.1 no such user")}
    repo.record_outcomes(NOW + 2, [
        Outcome(claimed[r].id, status, reply, due_at=NOW + 600, message_id=message.id,
                lease=claimed[r].lease_owner) for r, (status, reply) in replies.items()])
    # list two's copy goes back to the queue unattempted
    repo.record_outcomes(NOW + 2, [Outcome(claimed["secret-member@z.test"].id,
                                           DeliveryStatus.QUEUED, "", due_at=NOW + 2,
                                           lease=claimed["secret-member@z.test"].lease_owner)])
    return message.id


def test_an_admin_sees_every_phase_and_every_recipient_final_state(
        repo: Repository, cross_post: str) -> None:
    traces = TraceService(OperationsStore(repo.engines)).trace("post-1@outside.test").traces
    [line] = timelines(ADMIN, "post-1@outside.test", traces)
    assert line.queue_id == cross_post and line.matched_as == ("Message-ID",)
    phases = [(e.phase, e.kind, e.recipient) for e in line.entries]
    assert phases[0] == ("receipt", "received", None)
    assert [p for p in phases if p[0] == "expansion"] == [
        ("expansion", "expanded", None), ("expansion", "expanded", None)]
    assert ("attempt", "deferred", "bob@x.test") in phases
    assert ("final", "failed", "cy@y.test") in phases
    assert ("final", "delivered", "ann@x.test") in phases
    states = {s.recipient: (s.status, s.final, s.tone, s.last_reply) for s in line.recipients}
    assert states == {
        "ann@x.test": ("delivered", True, "ok", "250 2.0.0 queued as A1"),
        "bob@x.test": ("deferred", False, "warn", "451 4.7.1 greylisted"),
        "cy@y.test": ("failed", True, "bad", "550 5.1.1 no such user"),
        "secret-member@z.test": ("queued", False, "info", ""),
    }
    assert "two@example.test" in line.entries[0].detail and line.hidden_deliveries == 0


def test_an_owner_sees_only_their_list_and_a_stranger_nothing(
        repo: Repository, cross_post: str) -> None:
    traces = TraceService(OperationsStore(repo.engines)).trace("poster@outside.test").traces
    [line] = timelines(OWNER, "poster@outside.test", traces)
    assert line.matched_as == ("sender",)
    assert {s.recipient for s in line.recipients} == {"ann@x.test", "bob@x.test",
                                                      "cy@y.test"}
    assert line.hidden_deliveries == 1 and line.rcpt_tos == ("one@example.test",)
    shown = " ".join(e.detail + " " + (e.recipient or "") for e in line.entries)
    assert "two@example.test" not in shown and "secret-member" not in shown
    assert "one@example.test" in shown
    assert timelines(STRANGER, "poster@outside.test", traces) == []


def test_the_query_says_why_a_message_matched(repo: Repository, cross_post: str) -> None:
    service = TraceService(OperationsStore(repo.engines))
    [by_id] = timelines(ADMIN, cross_post, service.trace(cross_post).traces)
    assert by_id.matched_as == ("queue id",)
    [by_rcpt] = timelines(ADMIN, "cy@y.test", service.trace("cy@y.test").traces)
    assert by_rcpt.matched_as == ("recipient",)
