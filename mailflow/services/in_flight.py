"""How many bytes of large contents the senders render and send at once.

A content too large for the caches (:mod:`mailflow.memory`) is read, rendered and handed
to the egress by each transaction that sends it; with every sender on one such post
(a 25 MB message to a list of a few hundred members), the relay and its child would
hold a copy per sender.  So large contents enter the send path only while the bytes of
those already in it stay within ``limit``; one always may, whatever its size.  They
enter in the order they came, so a larger one is not passed over for ever.  Smaller
contents never wait: they are bounded by the senders' number times the caches' item
limit, and they are the fan-out's hot path.
"""

from __future__ import annotations

import asyncio
from collections import deque


class LargeInFlight:
    """Bytes of large contents being rendered or sent, bounded; waiters enter in order."""

    def __init__(self, limit: int, large: int) -> None:
        """``large``: contents above this many bytes count (the rendered copies' item
        limit); ``limit``: how many bytes of them may be in flight together."""
        self.limit = limit
        self.large = large
        self.bytes = 0
        self.count = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def enter(self, size: int) -> int:
        """Wait for room for a content of ``size`` bytes; returns what to :meth:`leave`."""
        if size <= self.large:
            return 0
        if not self._waiting and self._fits(size):
            self._take(size)
            return size
        entered = asyncio.get_running_loop().create_future()
        self._waiting.append((size, entered))
        try:
            await entered
        except asyncio.CancelledError:
            if entered.done() and not entered.cancelled():
                self.leave(size)  # let in just as it was cancelled: pass the room on
            raise
        return size

    def leave(self, size: int) -> None:
        if not size:
            return
        self.count -= 1
        self.bytes -= size
        while self._waiting:
            waiting, entered = self._waiting[0]
            if entered.cancelled():
                self._waiting.popleft()
                continue
            if not self._fits(waiting):
                return
            self._waiting.popleft()
            self._take(waiting)
            entered.set_result(None)

    def _fits(self, size: int) -> bool:
        return not self.count or self.bytes + size <= self.limit

    def _take(self, size: int) -> None:
        self.count += 1
        self.bytes += size
