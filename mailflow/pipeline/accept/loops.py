"""Refuse, per recipient, a message that already went through this instance for it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mailflow import addresses, headers
from mailflow.errors import LoopDetected
from mailflow.model import ROLE_ALIAS_IDS
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


def _marked_as(canonical: str) -> list[str]:
    """The list addresses a copy for ``canonical`` carries the marker of: its own; for a
    plus tag the untagged address's, which it reaches; and for ``postmaster@``/``abuse@``
    the role alias's, which has no domain (one alias for every domain), so that a role
    address routed back to this relay is a loop too."""
    marked = [canonical]
    base, tag = addresses.untagged(canonical)
    if tag:
        marked.append(base)
    local, _ = addresses.split(canonical)
    if local in ROLE_ALIAS_IDS and local != canonical:
        marked.append(local)
    return marked


@dataclass(frozen=True, slots=True)
class NotLooping:
    instance_id: str

    async def __call__(self, ctx: MessageContext, pending: Sequence[Recipient]
                       ) -> Mapping[str, Decision]:
        if _LOOP_HEADER_BYTES not in ctx.lowered:  # the usual case
            return {}
        decisions: dict[str, Decision] = {}
        for rcpt in pending:
            try:
                check_not_looping(ctx.header, self.instance_id, _marked_as(rcpt.canonical))
            except LoopDetected as error:
                decisions[rcpt.canonical] = Decision.reject(error)
        return decisions
