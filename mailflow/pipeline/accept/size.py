"""Refuse a message larger than the configured limit (for every recipient)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mailflow.errors import MessageTooLarge
from mailflow.pipeline.context import Decision, MessageContext, Recipient, for_all


@dataclass(frozen=True, slots=True)
class SizeLimit:
    max_bytes: int

    async def __call__(self, ctx: MessageContext, pending: Sequence[Recipient]
                       ) -> Mapping[str, Decision]:
        if ctx.size <= self.max_bytes:
            return {}
        return for_all(pending, Decision.reject(MessageTooLarge(
            f"message too large ({ctx.size} bytes, limit {self.max_bytes})")))
