"""Least-recently-used maps: of byte strings, bounded by their total size in bytes; and of
small answers, each kept until its deadline, bounded in count.

Counting entries says nothing about memory when one entry may be 200 bytes and the next
20 MB; every cache of contents (bodies, rendered copies) bounds its bytes with this.
Not thread-safe: a cache shared between threads holds its own lock around it.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Hashable
from typing import Final, Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class BytesLRU(Generic[K]):
    def __init__(self, max_bytes: int, max_item: int | None = None) -> None:
        """``max_item``: larger values are not kept at all (default: ``max_bytes``).

        With ``max_item`` above ``max_bytes``, such a value is kept alone (everything
        else is dropped): for a cache whose newest entry must survive whatever its size.
        """
        self.max_bytes = max_bytes
        self.max_item = max_bytes if max_item is None else max_item
        self.size = 0
        self._items: OrderedDict[K, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: K) -> bool:
        return key in self._items

    def get(self, key: K) -> bytes | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: bytes) -> None:
        """Keep ``value`` as the most recent, dropping the least recent beyond the bound."""
        if len(value) > self.max_item:
            self.pop(key)
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.size -= len(old)
        self._items[key] = value
        self.size += len(value)
        while self.size > self.max_bytes and len(self._items) > 1:
            _, dropped = self._items.popitem(last=False)
            self.size -= len(dropped)

    def pop(self, key: K) -> bytes | None:
        value = self._items.pop(key, None)
        if value is not None:
            self.size -= len(value)
        return value


V = TypeVar("V")


class Missing(enum.Enum):
    """What :meth:`TtlLRU.get` answers for a key it has no fresh answer for (``None``
    is an answer worth keeping: "this domain has no key")."""

    MISSING = enum.auto()


MISSING: Final = Missing.MISSING


class TtlLRU(Generic[K, V]):
    """Answers kept each until its own deadline, the least recently used dropped beyond
    ``max_entries``: for caches of small answers (a DNS policy, a key lookup) whose
    count, not size, is the bound."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K, now: float) -> V | Missing:
        """The answer kept for ``key`` if its deadline is after ``now``."""
        entry = self._items.get(key)
        if entry is None or entry[0] <= now:
            return MISSING
        self._items.move_to_end(key)
        return entry[1]

    def put(self, key: K, value: V, until: float) -> None:
        """Keep ``value`` until ``until``, as the most recent."""
        self._items[key] = (until, value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)
