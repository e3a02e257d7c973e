"""The interface every egress provider implements.

The scheduler hands a provider one SMTP-transaction-sized unit: an envelope sender, up to
``max_recipients_per_transaction`` recipients sharing one content, and the bytes.  The
provider answers per recipient with an SMTP-style code; a failure that concerns the whole
attempt (no connection, timeout) is raised as :class:`mailflow.errors.EgressUnavailable`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from mailflow.model import Egress, RecipientReply

__all__ = ["Egress", "PerContent", "RecipientReply"]

V = TypeVar("V")


class PerContent(Generic[V]):
    """Something derived from a content, looked up by the bytes object's identity.

    The scheduler hands the same rendered copy (one bytes object) to every transaction
    of a post, so identity finds it without hashing the bytes; the content is kept with
    the value so its id cannot be reused while the entry lives.  Bounded in bytes, as
    every cache of contents (``weigh`` says what an entry holds; the content itself by
    default): the least recently used go first.  An entry heavier than ``max_item``
    (default ``max_bytes``) is not kept.
    """

    def __init__(self, max_bytes: int,
                 weigh: Callable[[bytes, V], int] = lambda content, value: len(content),
                 max_item: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_item = max_bytes if max_item is None else max_item
        self.size = 0
        self._weigh = weigh
        self._entries: OrderedDict[int, tuple[bytes, V, int]] = OrderedDict()

    def get(self, content: bytes) -> V | None:
        entry = self._entries.get(id(content))
        if entry is None or entry[0] is not content:
            return None
        self._entries.move_to_end(id(content))
        return entry[1]

    def put(self, content: bytes, value: V) -> list[V]:
        """Keep ``value`` for ``content``; returns the values this pushed out."""
        old = self._entries.pop(id(content), None)
        if old is not None:
            self.size -= old[2]
        weight = self._weigh(content, value)
        if weight > self.max_item:
            return []
        self._entries[id(content)] = (content, value, weight)
        self.size += weight
        evicted = []
        while self.size > self.max_bytes and len(self._entries) > 1:
            _, dropped, dropped_weight = self._entries.popitem(last=False)[1]
            self.size -= dropped_weight
            evicted.append(dropped)
        return evicted

    def clear(self) -> None:
        self._entries.clear()
        self.size = 0
