"""Message trace: what happened to the messages a query names (``mailflow trace``, and
``GET /api/v1/trace``)."""

from __future__ import annotations

from dataclasses import dataclass

from mailflow.errors import InvalidInput
from mailflow.model import MessageTrace
from mailflow.store.operations import OperationsStore

DEFAULT_LIMIT = 20   # messages traced when the query matches more
MAX_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class TraceResult:
    traces: list[MessageTrace]
    truncated: bool  # more messages matched than ``limit``


class TraceService:
    """Finds the messages a query names and reads their timelines."""

    def __init__(self, store: OperationsStore) -> None:
        self.store = store

    def trace(self, query: str, *, since: float | None = None, until: float | None = None,
              limit: int = DEFAULT_LIMIT) -> TraceResult:
        """Timelines of the newest messages ``query`` names (a queue id, a Message-ID, or
        a sender's or recipient's address) received between ``since`` and ``until``."""
        if not query.strip():
            raise InvalidInput("nothing to trace: give a queue id, a Message-ID or an address")
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput(f"invalid limit {limit}: between 1 and {MAX_LIMIT}")
        if since is not None and until is not None and until < since:
            raise InvalidInput("the end of the time range is before its start")
        ids = self.store.find_messages(query, since, until, limit + 1)
        return TraceResult(self.store.traces(ids[:limit]), len(ids) > limit)
