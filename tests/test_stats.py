"""The dashboard's figures per hour (``services/stats.py``) on SQLite and PostgreSQL:
which hour each message and outcome falls in, and what is left out."""

from __future__ import annotations

import pytest
from sqlalchemy import insert

from mailflow.errors import InvalidInput
from mailflow.ids import new_message_id
from mailflow.services.stats import HOUR, StatsService
from mailflow.store import Engines
from mailflow.store.operations import OperationsStore
from mailflow.store.tables import deliveries, messages
from mailflow.testing.clock import FakeClock

NOW = 1_800_000_000.0 + 1800  # half past an hour


def _message(engines: Engines, received: float, outcomes: list[tuple[str, float]]) -> None:
    message_id = new_message_id(received)
    with engines.writer.begin() as conn:
        conn.execute(insert(messages).values(
            id=message_id, mail_from="s@out.test", rcpt_tos="team@example.test",
            blob="d" * 64, size=1, received_at=received, status="done", updated_at=received))
        for n, (status, at) in enumerate(outcomes):
            conn.execute(insert(deliveries).values(
                message_id=message_id, list_id=1, recipient=f"r{n}@x.test", status=status,
                due_at=at, created_at=received, updated_at=at))


def test_messages_and_outcomes_fall_in_their_hours(engines: Engines) -> None:
    this_hour = NOW // HOUR * HOUR
    _message(engines, NOW - 60, [("delivered", NOW - 30), ("failed", NOW - 20),
                                 ("deferred", NOW - 10)])
    _message(engines, this_hour - 1, [("delivered", this_hour + 5)])  # an hour apart
    _message(engines, NOW - 3 * HOUR, [("delivered", NOW - 3 * HOUR + 1)])
    _message(engines, NOW - 25 * HOUR, [("delivered", NOW - 25 * HOUR)])  # too old
    # received two days ago, delivered after its retries within the window
    _message(engines, NOW - 48 * HOUR, [("failed", NOW - 2 * HOUR)])
    hours = StatsService(OperationsStore(engines), FakeClock(NOW)).deliveries_per_hour(24)
    assert len(hours) == 24 and hours[-1].start == this_hour
    assert hours[0].start == this_hour - 23 * HOUR
    figures = {int((h.start - this_hour) // HOUR): (h.received, h.delivered, h.failed)
               for h in hours if h.received or h.delivered or h.failed}
    assert figures == {0: (1, 2, 1), -1: (1, 0, 0), -2: (0, 0, 1), -3: (1, 1, 0)}


def test_the_hours_asked_for_are_bounded() -> None:
    service = StatsService(OperationsStore.__new__(OperationsStore), FakeClock(NOW))
    for hours in (0, 24 * 7 + 1):
        with pytest.raises(InvalidInput, match="invalid hours"):
            service.deliveries_per_hour(hours)
