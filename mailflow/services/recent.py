"""The messages stored most recently, kept in memory for the scheduler's first send.

A fresh post is usually claimed within milliseconds of its commit; looking its row up
again would cost a database round trip per claim.  Entries are only ever added after
the commit, so whatever is found here exists in the store.

Bounded in bytes, not in messages: a row holds its envelope, and one with a thousand
recipients weighs as much as hundreds of ordinary ones.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from mailflow.memory import DEFAULT_BUDGET
from mailflow.model import InboundMessage

ROW_BYTES = 600       # about what a row's object, its strings and its entry here take
RECIPIENT_BYTES = 60  # and each recipient's string and slot, besides its characters


def weight(message: InboundMessage) -> int:
    """About the bytes ``message`` holds in memory (Python's object headers included)."""
    return (ROW_BYTES + len(message.id) + len(message.mail_from) + len(message.blob)
            + len(message.peer) + len(message.helo)
            + sum(RECIPIENT_BYTES + len(r) for r in message.rcpt_tos))


class RecentMessages:
    def __init__(self, max_bytes: int = DEFAULT_BUDGET.recent_messages) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._messages: OrderedDict[str, tuple[InboundMessage, int]] = OrderedDict()

    def remember(self, messages: Iterable[InboundMessage]) -> None:
        entries = self._messages
        for message in messages:
            old = entries.pop(message.id, None)
            if old is not None:
                self.size -= old[1]
            size = weight(message)
            entries[message.id] = (message, size)
            self.size += size
        while self.size > self.max_bytes and entries:
            self.size -= entries.popitem(last=False)[1][1]

    def get(self, message_id: str) -> InboundMessage | None:
        entry = self._messages.get(message_id)
        return entry[0] if entry is not None else None
