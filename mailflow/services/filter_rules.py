"""The filter rules as the accept step reads them: by recipient, for a whole message.

As :mod:`mailflow.services.sender_rules`: while no rule exists (most relays) a count
remembered for ``ttl`` seconds spares every message its query; otherwise the rules of
the recipients not remembered are fetched in **one** statement per message and kept for
``ttl`` seconds per address (an address without rules is remembered too), bounded in
bytes, least recently used first out.  ``mailflow filter add`` in another process is
seen within ``ttl`` (``recipient_cache_ttl``); a change through a
:class:`~mailflow.services.directory.DirectoryService` in this process invalidates at
once.  ``ttl`` 0: every message asks the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final

from mailflow.clock import Clock
from mailflow.model import FilterRule
from mailflow.store.runner import StoreRunner

log = logging.getLogger(__name__)

Fetch = Callable[[Sequence[str]], Awaitable[Sequence[FilterRule]]]
Count = Callable[[], Awaitable[int]]

MAX_BYTES: Final = 4 * 1024 * 1024  # the addresses' rules remembered, estimated in bytes
_ENTRY_OVERHEAD: Final = 200
_RULE_OVERHEAD: Final = 250


def _cost(target: str, rules: Sequence[FilterRule]) -> int:
    return (_ENTRY_OVERHEAD + len(target)
            + sum(_RULE_OVERHEAD + len(r.argument) + len(r.header) + len(r.text)
                  for r in rules))


class FilterBook:
    """Answers :class:`~mailflow.pipeline.accept.filters.FilterRules` from the store."""

    def __init__(self, fetch: Fetch, count: Count, clock: Clock, ttl: float,
                 max_bytes: int = MAX_BYTES) -> None:
        self._fetch = fetch
        self._count_rules = count
        self.clock = clock
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._count: int | None = None
        self._counted_until = float("-inf")
        self._counting: asyncio.Task[None] | None = None
        self._by_target: OrderedDict[str, tuple[float, tuple[FilterRule, ...], int]] = \
            OrderedDict()
        self.size = 0

    def invalidate(self) -> None:
        self._counted_until = float("-inf")
        self._by_target.clear()
        self.size = 0

    async def rules_for(self, targets: Sequence[str]) -> Mapping[str, Sequence[FilterRule]]:
        if not targets:
            return {}
        if self.ttl <= 0:
            return _by_target(await self._fetch(targets))
        now = self.clock.now()
        if self._counted_until <= now:
            await self._recount()
        if not self._count:
            return {}
        found: dict[str, tuple[FilterRule, ...]] = {}
        missing = []
        for target in dict.fromkeys(targets):
            entry = self._by_target.get(target)
            if entry is not None and entry[0] > now:
                self._by_target.move_to_end(target)
                found[target] = entry[1]
            else:
                missing.append(target)
        if missing:
            fetched = _by_target(await self._fetch(missing))
            for target in missing:
                rules = fetched.get(target, ())
                self._remember(target, rules)
                found[target] = rules
        return {t: rules for t, rules in found.items() if rules}

    async def _recount(self) -> None:
        if self._counting is None:
            self._counting = asyncio.ensure_future(self._count_now())
            self._counting.add_done_callback(self._counted)
        await asyncio.shield(self._counting)

    def _counted(self, _: asyncio.Task[None]) -> None:
        self._counting = None

    async def _count_now(self) -> None:
        count = await self._count_rules()
        if count != self._count:
            self._by_target.clear()
            self.size = 0
        self._count = count
        self._counted_until = self.clock.now() + self.ttl

    def _remember(self, target: str, rules: tuple[FilterRule, ...]) -> None:
        old = self._by_target.pop(target, None)
        if old is not None:
            self.size -= old[2]
        cost = _cost(target, rules)
        if cost > self.max_bytes:
            return
        self._by_target[target] = (self.clock.now() + self.ttl, rules, cost)
        self.size += cost
        while self.size > self.max_bytes:
            _, (_, _, dropped) = self._by_target.popitem(last=False)
            self.size -= dropped


def _by_target(rules: Sequence[FilterRule]) -> dict[str, tuple[FilterRule, ...]]:
    grouped: dict[str, list[FilterRule]] = {}
    for rule in rules:
        grouped.setdefault(rule.target, []).append(rule)
    return {t: tuple(r) for t, r in grouped.items()}


def no_filters(clock: Clock) -> FilterBook:
    """A book without rules (an accept service built without the store: tests)."""

    async def fetch(targets: Sequence[str]) -> Sequence[FilterRule]:
        return ()

    async def count() -> int:
        return 0

    return FilterBook(fetch, count, clock, ttl=float("inf"))


def store_filter_book(runner: StoreRunner, clock: Clock, ttl: float) -> FilterBook:
    """The store's rules, read off the event loop; failures are temporary (451)."""

    reply = "cannot check the message right now, try again later"

    async def fetch(targets: Sequence[str]) -> Sequence[FilterRule]:
        return await runner.read_on_ingest("filter rule lookup", reply,
                                           runner.repo.filter_rules_for, targets)

    async def count() -> int:
        return await runner.read_on_ingest("filter rule count", reply,
                                           runner.repo.count_filter_rules)

    return FilterBook(fetch, count, clock, ttl)
