"""Committed trace events as log lines and counters: one line per event (``expanded``,
``discarded``, ``held``, ``bounce``, ``replied`` …), written once its transaction has
committed, so the log never tells of something a rollback undid."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from mailflow.metrics import count_events
from mailflow.model import Event

log = logging.getLogger("mailflow.events")


def note_events(events: Sequence[Event]) -> None:
    if not events:
        return
    count_events(e.kind for e in events)
    if not log.isEnabledFor(logging.INFO):
        return
    for event in events:
        log.info("%s %s: %s", event.kind, event.message_id or "-", event.detail,
                 extra={"action": event.kind, "queue_id": event.message_id})
