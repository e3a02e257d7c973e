"""Refuse, per recipient, a message that already went through this instance for it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mailflow import addresses, headers
from mailflow.errors import LoopDetected
from mailflow.pipeline.context import Decision, MessageContext, Recipient
from mailflow.pipeline.marker import LOOP_HEADER, loop_marker

_LOOP_HEADER_BYTES = LOOP_HEADER.lower().encode()


def check_not_looping(header: bytes, instance_id: str, list_addresses: list[str]) -> None:
    """Refuse a message that already went through this instance for one of the lists."""
    if not list_addresses or _LOOP_HEADER_BYTES not in header.lower():
        return
    seen = set(headers.field_values(header, LOOP_HEADER))
    for address in list_addresses:
        if loop_marker(instance_id, address) in seen:
            raise LoopDetected(f"mail loop: this message already went through {address}")


@dataclass(frozen=True, slots=True)
class NotLooping:
    instance_id: str

    async def __call__(self, ctx: MessageContext, pending: Sequence[Recipient]
                       ) -> Mapping[str, Decision]:
        if _LOOP_HEADER_BYTES not in ctx.lowered:  # the usual case
            return {}
        decisions: dict[str, Decision] = {}
        for rcpt in pending:
            # A plus tag reaches the untagged address: its marker counts too.
            base, tag = addresses.untagged(rcpt.canonical)
            try:
                check_not_looping(ctx.header, self.instance_id,
                                  [rcpt.canonical, base] if tag else [rcpt.canonical])
            except LoopDetected as error:
                decisions[rcpt.canonical] = Decision.reject(error)
        return decisions
