"""The dashboard's figures on SQLite and PostgreSQL: deliveries per hour by outcome, the
latest failures, and the chart drawn from them (no process, no browser)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailflow.blobs import BlobStore
from mailflow.model import DeliveryStatus, Outcome
from mailflow.store import Repository
from mailflow.store.operations import OperationsStore
from mailflow.testing.factories import make_list
from mailflow.web.ui.dashboard import hour_chart
from tests.test_operations import store

START = 1_800_000_000.0 - 1_800_000_000.0 % 3600  # on the hour
HOUR = 3600.0


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def settle(repo: Repository, at: float, status: DeliveryStatus, count: int) -> None:
    """Claim ``count`` due deliveries at ``at`` and give them a final outcome then."""
    claimed = repo.claim_due_deliveries(at, count, 60, "w")
    assert len(claimed) == count
    reply = "250 ok" if status is DeliveryStatus.DELIVERED else "550 no such user"
    repo.record_outcomes(at, [Outcome(d.id, status, reply, lease=d.lease_owner)
                              for d in claimed])


def test_outcomes_are_counted_in_the_hour_they_became_final(repo: Repository,
                                                             blobs: BlobStore) -> None:
    make_list(repo, "team@example.test", [f"m{i}@x.test" for i in range(6)])
    store(repo, blobs, "team@example.test", START - 2 * HOUR)
    settle(repo, START - HOUR + 5, DeliveryStatus.DELIVERED, 1)  # before the window
    settle(repo, START + 0.5, DeliveryStatus.DELIVERED, 2)       # hour 0
    settle(repo, START + 2 * HOUR + 3599, DeliveryStatus.FAILED, 1)  # hour 2's last second
    settle(repo, START + 3 * HOUR, DeliveryStatus.DELIVERED, 1)  # hour 3's first
    settle(repo, START + 4 * HOUR, DeliveryStatus.FAILED, 1)     # after a 4-hour window
    operations = OperationsStore(repo.engines)
    counts = operations.hourly_outcomes(START, 4)
    assert counts == {"delivered": [2, 0, 0, 1], "failed": [0, 0, 1, 0]}
    failures = operations.recent_failures(10)
    assert [(f.recipient, f.list_address) for f in failures] == [
        (failures[0].recipient, "team@example.test"), (failures[1].recipient,
                                                        "team@example.test")]
    assert failures[0].updated_at == START + 4 * HOUR  # newest first
    assert failures[0].last_reply is not None and failures[0].last_reply.startswith("550")


def test_the_chart_stacks_failures_on_deliveries_and_scales_to_the_busiest_hour() -> None:
    chart = hour_chart([4, 0, 2], [0, 0, 2], START)
    assert (chart.top_count, chart.total_delivered, chart.total_failed) == (4, 6, 2)
    tallest, empty, mixed = chart.bars
    assert tallest.delivered_y == pytest.approx(6)  # the top of the drawing room
    assert (empty.delivered_h, empty.failed_h) == (0, 0)
    assert mixed.delivered_h == mixed.failed_h == pytest.approx(tallest.delivered_h / 2)
    assert mixed.failed_y + mixed.failed_h == pytest.approx(mixed.delivered_y)  # on top
    assert tallest.hour == "08:00" and empty.hour == ""  # a label every six hours
    assert "2 delivered, 2 failed" in mixed.label
    assert hour_chart([0, 0], [0, 0], START).bars[0].delivered_h == 0  # no division by 0
