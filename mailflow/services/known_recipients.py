"""A short-lived memory of recipient addresses known to exist, for RCPT checks.

Every RCPT would otherwise cost a database round trip on a reader thread.  Only positive
answers are kept, and only for ``ttl`` seconds: a list created a moment ago is found at
once, and a list deleted a moment ago may still be accepted for that long, after which
expansion records it as dropped.
"""

from __future__ import annotations

from mailflow.clock import Clock
from mailflow.model import Resolution

MAX_ENTRIES = 10_000


class KnownRecipients:
    def __init__(self, clock: Clock, ttl: float) -> None:
        self.clock = clock
        self.ttl = ttl
        self._known: dict[str, tuple[float, Resolution]] = {}

    def get(self, address: str) -> Resolution | None:
        entry = self._known.get(address)
        if entry is None:
            return None
        expires, resolution = entry
        if expires < self.clock.now():
            del self._known[address]
            return None
        return resolution

    def remember(self, address: str, resolution: Resolution) -> None:
        if self.ttl <= 0 or resolution.mailing_list is None:
            return
        if len(self._known) >= MAX_ENTRIES:
            self._known.clear()
        self._known[address] = (self.clock.now() + self.ttl, resolution)
