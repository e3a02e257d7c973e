"""Durations (``15m``, ``2h``, ``7d``) and moments (a duration ago, or an ISO date and
time) as operators type them to ``mailflow trace`` and ``mailflow queue``."""

from __future__ import annotations

import re

from mailflow.errors import InvalidInput
from mailflow.services.directory import validated_date

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number with an optional unit s, m, h, d or w (seconds)."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise InvalidInput(f"invalid duration {text!r}: write a number and a unit, such as "
                           "90s, 15m, 2h, 7d or 1w")
    return float(match.group(1)) * UNITS[match.group(2) or "s"]


def parse_moment(text: str, now: float) -> float:
    """``text`` as epoch seconds: a duration ago (``2h``), or an ISO date or date and
    time (UTC unless it says otherwise)."""
    if _DURATION.fullmatch(text.strip().lower()):
        return now - parse_duration(text)
    moment = validated_date(text, "time")
    assert moment is not None  # only blank text gives None, and blank is no duration
    return moment
