"""The log formats: a JSON object per line carries the mail event's fields."""

from __future__ import annotations

import json
import logging

from mailflow.logs import JsonFormatter


def test_a_json_line_carries_the_message_and_the_event_fields() -> None:
    record = logging.LogRecord("mailflow.x", logging.INFO, __file__, 1,
                               "deliver %s: %s", ("q1", "250 ok"), None)
    record.__dict__.update({"action": "delivered", "queue_id": "q1", "recipient": "a@b.test"})
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "deliver q1: 250 ok"
    assert (entry["level"], entry["logger"]) == ("INFO", "mailflow.x")
    assert {k: entry[k] for k in ("action", "queue_id", "recipient")} == {
        "action": "delivered", "queue_id": "q1", "recipient": "a@b.test"}
    assert "args" not in entry and "msg" not in entry
