"""Which contents the child keeps, decided by the relay and bounded in bytes.

A post to a large list goes out in many transactions with the same rendered copy (one
bytes object, found by identity as in :class:`~mailflow.egress.base.PerContent`): the
child keeps it under a number, so it crosses the socketpair once.  A content is kept
from its second transaction on; one seen once (most messages to an alias or a small
list) is sent with its transaction and dropped by the child, so neither process holds
copies of contents nobody will send again.  What is kept is bounded in bytes, not in
contents, so large messages cannot multiply the memory of either process; a content
larger than ``max_item`` (a quarter of the budget by default) is never kept: it travels
with each of its transactions.
"""

from __future__ import annotations

from collections import OrderedDict

from mailflow.memory import DEFAULT_BUDGET, item_limit

SEEN_ONCE = 1024                # contents remembered (by identity only) as sent once


class ChildContents:
    """Numbers for the contents the child keeps, and what it must forget."""

    def __init__(self, budget: int = DEFAULT_BUDGET.child_contents,
                 max_item: int | None = None) -> None:
        self.budget = budget
        self.max_item = item_limit(budget) if max_item is None else max_item
        self._kept: OrderedDict[int, tuple[bytes, int]] = OrderedDict()  # id -> content, key
        self._seen: OrderedDict[tuple[int, int, int], None] = OrderedDict()  # no ref
        self._bytes = 0
        self._next = 0

    def place(self, content: bytes) -> tuple[int, bool, list[int]]:
        """(key, whether the content goes with this send, keys the child must forget).

        Key 0: the child does not keep this content.  The seen-once record knows a
        content by its identity, length and hash: by identity and length alone, a freed
        copy's address taken by the next one of the same length (a personalized list's
        copies, one per member, all alike in length) made every other such copy "seen
        twice", and kept in the child for nothing.  A content's hash is computed once
        (``bytes`` keeps it) and only for contents small enough to keep.
        """
        entry = self._kept.get(id(content))
        if entry is not None and entry[0] is content:
            self._kept.move_to_end(id(content))
            return entry[1], False, []
        if len(content) > self.max_item:
            return 0, True, []
        seen = (id(content), len(content), hash(content))
        if seen not in self._seen:
            self._seen[seen] = None
            if len(self._seen) > SEEN_ONCE:
                self._seen.popitem(last=False)
            return 0, True, []
        del self._seen[seen]
        self._next += 1
        self._kept[id(content)] = (content, self._next)
        self._bytes += len(content)
        forget = []
        while self._bytes > self.budget and len(self._kept) > 1:
            old, key = self._kept.popitem(last=False)[1]
            self._bytes -= len(old)
            forget.append(key)
        return self._next, True, forget

    @property
    def kept_bytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        """A new child keeps nothing yet."""
        self._kept.clear()
        self._bytes = 0
