"""The messages stored most recently, kept in memory for the scheduler's first send.

A fresh post is usually claimed within milliseconds of its commit; looking its row up
again would cost a database round trip per claim.  Entries are only ever added after
the commit, so whatever is found here exists in the store.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from mailflow.model import InboundMessage


class RecentMessages:
    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._messages: OrderedDict[str, InboundMessage] = OrderedDict()

    def remember(self, messages: Iterable[InboundMessage]) -> None:
        for message in messages:
            self._messages[message.id] = message
        while len(self._messages) > self.capacity:
            self._messages.popitem(last=False)

    def get(self, message_id: str) -> InboundMessage | None:
        return self._messages.get(message_id)
