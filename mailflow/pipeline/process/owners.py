"""Mail for a list's owners: what ``LIST-owner@`` receives, and bounces nobody can read.

The message goes on to the list's owners (role ``owner``) as it came, as a message of
the relay's own (``GENERATED``) that shares the original's stored bytes: no list
decoration, no second copy of the body.  Its envelope sender is ``LIST-bounces@`` for
``-owner`` mail (an owner address that bounces is scored as any member), and the null
sender for a forwarded bounce (a bounce of a bounce must go nowhere, or two robots
would mail each other without end).
"""

from __future__ import annotations

from mailflow import ids
from mailflow.model import (
    GENERATED,
    GeneratedMessage,
    InboundMessage,
    MailingList,
    MemberRole,
    NewDelivery,
)
from mailflow.pipeline.context import ProcessContext


def forward_to_owners(ctx: ProcessContext, target: MailingList, *, sender: str,
                      why: str) -> None:
    """Queue the message to ``target``'s owners with envelope sender ``sender``."""
    message = ctx.message
    owners = ctx.directory.staff(target.id, (MemberRole.OWNER,))
    if not owners:
        ctx.event("owner", f"{why} for {target.address}: the list has no owner, dropped")
        return
    copy = InboundMessage(id=ids.new_message_id(ctx.now), mail_from=sender,
                          rcpt_tos=tuple(owners), blob=message.blob, size=message.size,
                          received_at=ctx.now, peer="", helo="", protocol=GENERATED)
    ctx.generated.append(GeneratedMessage(copy, b""))
    ctx.deliveries.extend(NewDelivery(copy.id, target.id, owner, target.priority)
                          for owner in owners)
    ctx.event("owner", f"{why} for {target.address}: forwarded to {len(owners)} owner(s) "
                       f"as {copy.id}")
