"""Counters fed by committed trace events: bounces and auto-replies."""

from __future__ import annotations

from mailflow.metrics import REGISTRY
from mailflow.model import Event
from mailflow.services.event_log import note_events


def value(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_committed_events_move_their_counters() -> None:
    before = value("mailflow_bounces_total"), value("mailflow_autoreplies_total")
    note_events([Event("expanded", "list a@b.test: 2 recipient(s)", "q1"),
                 Event("bounce", "to x@b.test: relayed to the original sender", "q1"),
                 Event("replied", "auto-reply of a@b.test to <s@c.test>: q2", "q1"),
                 Event("bounce", "for a@b.test: kept", "q3")])
    after = value("mailflow_bounces_total"), value("mailflow_autoreplies_total")
    assert (after[0] - before[0], after[1] - before[1]) == (2, 1)
