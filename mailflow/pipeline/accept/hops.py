"""Refuse a message that has travelled through too many relays (Received fields)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mailflow import headers
from mailflow.errors import LoopDetected
from mailflow.pipeline.context import Decision, MessageContext, Recipient, for_all


def check_hops(header: bytes, max_received: int) -> None:
    hops = headers.count_fields(header, "Received")
    if hops > max_received:
        raise LoopDetected(f"too many hops ({hops} Received headers, at most {max_received})")


@dataclass(frozen=True, slots=True)
class HopLimit:
    max_received: int

    async def __call__(self, ctx: MessageContext, pending: Sequence[Recipient]
                       ) -> Mapping[str, Decision]:
        if ctx.lowered.count(b"received") <= self.max_received:
            return {}  # an upper bound of the Received fields: no need to parse them
        try:
            check_hops(ctx.header, self.max_received)
        except LoopDetected as error:
            return for_all(pending, Decision.reject(error))
        return {}
