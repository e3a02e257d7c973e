"""The sender entries (block and allow lists) as the accept service reads them: by sender.

Every ``RCPT TO`` and every message asks which entries match its sender.  Asking the
store each time would cost a query per recipient; instead:

* **no entries at all** (most relays): the number of entries is remembered for ``ttl``
  seconds, so the question costs no query; a recount happens at most once per ``ttl``
  (one at a time, however many messages wait for it).
* **entries exist**: the entries matching a sender are fetched in one query and
  remembered for ``ttl`` seconds, so the ``RCPT TO`` commands and the ``DATA`` of one
  message (and the next messages of that sender) share one query.  The memory is
  bounded in bytes; the least recently used senders go first.

So a change made elsewhere (``mailflow block add`` is another process) is seen within
``ttl`` (``recipient_cache_ttl``).  A change through a :class:`DirectoryService` in this
process calls :meth:`SenderRuleBook.invalidate` and is seen at once.  With ``ttl`` 0
(``mailflow pipe``: one message per process) every question is one query.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from mailflow.clock import Clock
from mailflow.model import SenderRule
from mailflow.store.runner import StoreRunner

log = logging.getLogger(__name__)

Fetch = Callable[[str], Awaitable[Sequence[SenderRule]]]  # canonical sender -> entries
Count = Callable[[], Awaitable[int]]

MAX_BYTES: Final = 4 * 1024 * 1024  # the senders' entries remembered, estimated in bytes
_ENTRY_OVERHEAD: Final = 200         # a cache slot, its tuple and timestamps, estimated
_RULE_OVERHEAD: Final = 150          # a SenderRule object besides its strings, estimated


def _cost(sender: str, rules: Sequence[SenderRule]) -> int:
    return (_ENTRY_OVERHEAD + len(sender)
            + sum(_RULE_OVERHEAD + len(r.pattern) + len(r.target) for r in rules))


class SenderRuleBook:
    """Answers :class:`~mailflow.pipeline.context.SenderRules` from the store, cached."""

    def __init__(self, fetch: Fetch, count: Count, clock: Clock, ttl: float,
                 max_bytes: int = MAX_BYTES) -> None:
        self._fetch = fetch
        self._count_rules = count
        self.clock = clock
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._count: int | None = None        # entries in the store, as last counted
        self._counted_until = float("-inf")   # when that count is stale
        self._counting: asyncio.Task[None] | None = None
        self._by_sender: OrderedDict[str, tuple[float, tuple[SenderRule, ...], int]] = \
            OrderedDict()
        self.size = 0                         # estimated bytes held in ``_by_sender``

    @property
    def empty(self) -> bool:
        """Whether the last count found no entry: an answer then holds for every sender
        (the relay's child may remember a recipient without its sender)."""
        return self._count == 0

    def invalidate(self) -> None:
        """Forget everything: the entries changed (called by the directory service)."""
        self._counted_until = float("-inf")
        self._by_sender.clear()
        self.size = 0

    async def matching(self, sender: str) -> Sequence[SenderRule]:
        if not sender:
            return ()
        if self.ttl <= 0:
            return await self._fetch(sender)
        now = self.clock.now()
        if self._counted_until <= now:
            await self._recount()
        if not self._count:
            return ()
        entry = self._by_sender.get(sender)
        if entry is not None:
            if entry[0] > now:
                self._by_sender.move_to_end(sender)
                return entry[1]
            self._forget(sender)
        rules = tuple(await self._fetch(sender))
        self._remember(sender, rules)
        return rules

    async def _recount(self) -> None:
        """Count the entries, once for every caller waiting meanwhile."""
        if self._counting is None:
            self._counting = asyncio.ensure_future(self._count_now())
            self._counting.add_done_callback(self._counted)
        # Shielded: a caller that gives up (its client left) must not cancel the
        # count the others wait for.
        await asyncio.shield(self._counting)

    def _counted(self, _: asyncio.Task[None]) -> None:
        self._counting = None

    async def _count_now(self) -> None:
        count = await self._count_rules()
        if count != self._count:  # entries came or went: what each sender matched may too
            self._by_sender.clear()
            self.size = 0
        self._count = count
        self._counted_until = self.clock.now() + self.ttl

    def _remember(self, sender: str, rules: tuple[SenderRule, ...]) -> None:
        cost = _cost(sender, rules)
        if cost > self.max_bytes:
            return
        self._by_sender[sender] = (self.clock.now() + self.ttl, rules, cost)
        self.size += cost
        while self.size > self.max_bytes:
            _, (_, _, dropped) = self._by_sender.popitem(last=False)
            self.size -= dropped

    def _forget(self, sender: str) -> None:
        _, _, cost = self._by_sender.pop(sender)
        self.size -= cost


def no_rules(clock: Clock) -> SenderRuleBook:
    """A book without entries (an accept service built without the store: tests)."""

    async def fetch(sender: str) -> Sequence[SenderRule]:
        return ()

    async def count() -> int:
        return 0

    return SenderRuleBook(fetch, count, clock, ttl=float("inf"))


def store_rule_book(runner: StoreRunner, clock: Clock, ttl: float) -> SenderRuleBook:
    """The store's entries, read off the event loop; failures are temporary (451)."""

    reply = "cannot check the sender right now, try again later"

    async def fetch(sender: str) -> Sequence[SenderRule]:
        return await runner.read_on_ingest("sender rule lookup", reply,
                                           runner.repo.sender_rules_matching, sender)

    async def count() -> int:
        return await runner.read_on_ingest("sender rule count", reply,
                                           runner.repo.count_sender_rules)

    return SenderRuleBook(fetch, count, clock, ttl)
