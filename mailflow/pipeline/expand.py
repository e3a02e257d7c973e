"""Expansion: who gets a copy of a stored message, through which list or alias."""

from __future__ import annotations

from mailflow import addresses
from mailflow.model import Event, InboundMessage, ListKind, NewDelivery
from mailflow.store.repository import DirectoryView


def plan_deliveries(directory: DirectoryView, message: InboundMessage
                    ) -> tuple[list[NewDelivery], list[Event]]:
    """One delivery per active member of each list or alias the message was sent to.

    A member is copied once per list even if named twice; an address on two lists gets a
    copy from each, because each copy carries its own list's headers.  Runs inside the
    expansion transaction, on the database writer thread.
    """
    planned: list[NewDelivery] = []
    trace: list[Event] = []
    for rcpt in dict.fromkeys(addresses.canonical(r) for r in message.rcpt_tos):
        resolution = directory.resolve(rcpt)
        target = resolution.mailing_list
        if resolution.kind == "bounces" and target is not None:
            trace.append(Event("bounce", f"for {target.address}: kept, not processed "
                                         "(bounce processing is not enabled)", message.id))
            continue
        if target is None:
            trace.append(Event("dropped", f"{rcpt}: no longer a list or alias here",
                               message.id))
            continue
        recipients = directory.active_member_addresses(target.id)
        planned.extend(NewDelivery(message.id, target.id, member, target.priority)
                       for member in recipients)
        noun = "alias" if target.kind is ListKind.ALIAS else "list"
        trace.append(Event("expanded", f"{noun} {target.address}: {len(recipients)} "
                                       "recipient(s)", message.id))
    return planned, trace
