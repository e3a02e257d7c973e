"""Template filters of the operations pages (moderation, trace, rules, queue): moments
in UTC to the second, as the trace needs them (an attempt a second after another)."""

from __future__ import annotations

from datetime import UTC, datetime

from mailflow.web.ui.deps import TEMPLATES


def utc_iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


def utc_seconds(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S")


TEMPLATES.env.filters["utc_iso"] = utc_iso
TEMPLATES.env.filters["utc_seconds"] = utc_seconds
