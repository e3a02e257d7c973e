"""Expansion: who gets a copy of a stored message, through which list or alias."""

from __future__ import annotations

from mailflow import addresses, srs
from mailflow.model import RELAYED, NewDelivery
from mailflow.pipeline.context import ProcessContext


def expand(ctx: ProcessContext) -> None:
    """One delivery per active member of each list or alias the message was sent to.

    A member is copied once per list even if named twice, and a list reached by two
    addresses (``postmaster`` and ``postmaster@<domain>``, one role alias; or
    ``alias+a@d`` and ``alias+b@d``, plus tags of one alias) is expanded once; an address
    on two lists gets a copy from each, because each copy carries its own list's headers.
    """
    message, directory = ctx.message, ctx.directory
    expanded: set[int] = set()
    given = {addresses.canonical(r): r.strip().strip("<>") for r in message.rcpt_tos}
    for rcpt, address in given.items():
        if not rcpt:
            continue  # every recipient was discarded or held at accept time
        resolution = directory.resolve(rcpt)
        target = resolution.mailing_list
        if target is None and resolution.kind == "unknown_address":
            original = srs.parse(address)  # hash and age were checked at RCPT
            if original is not None:
                ctx.deliveries.append(NewDelivery(message.id, RELAYED, original, 0))
                ctx.event("bounce", f"to {rcpt}: relayed to the original sender")
                continue
        if resolution.kind in ("bounces", "request", "owner"):
            continue  # the bounces step's, the list commands step's

        if target is None:
            ctx.event("dropped", f"{rcpt}: no longer a list or alias here")
            continue
        if target.id in expanded:
            continue
        expanded.add(target.id)
        recipients = directory.active_member_addresses(target.id)
        ctx.deliveries.extend(NewDelivery(message.id, target.id, member, target.priority)
                              for member in recipients)
        noun = target.kind.value
        ctx.event("expanded", f"{noun} {target.address}: {len(recipients)} recipient(s)")
