"""Roles on list rosters, as the posting policy reads them: one query per message.

Not cached: a roster changes with every subscription, and only posts to lists whose
posting is restricted ask (open lists, the usual case, never do).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mailflow.model import MemberRole
from mailflow.store.runner import StoreRunner


class StoreRoster:
    """Answers :class:`~mailflow.pipeline.accept.posting.Roster` from the store, off the
    event loop; failures are temporary (451)."""

    def __init__(self, runner: StoreRunner) -> None:
        self.runner = runner

    async def roles(self, list_ids: Sequence[int], senders: Sequence[str]
                    ) -> Mapping[tuple[int, str], MemberRole]:
        return await self.runner.read_on_ingest(
            "roster lookup", "cannot check the list's roster right now, try again later",
            self.runner.repo.roster_roles, list_ids, senders)
