"""The periodic part of bounce processing: what members disabled for bouncing are owed.

Counting a bounce only changes a member's score and status (in the transaction that
found it); the mail that follows is written here, in the relay's maintenance round:
a disabled member's warnings (the first also tells the owners), its removal after the
last one, and the reset of scores whose last bounce is older than ``stale_after``.
Generated messages are stored with their deliveries in the same transaction as the
state they change, so a warning is neither lost nor sent twice.

The list's owners (members with the ``owner`` role) are told; a list without one tells
``fallback`` (the ``postmaster_address``) instead, if set.
"""

from __future__ import annotations

from mailflow import ids
from mailflow.blobs import content_hash
from mailflow.bounce_score import BouncePolicy, Due
from mailflow.model import (
    GENERATED,
    Event,
    GeneratedMessage,
    InboundMessage,
    MemberRole,
    NewDelivery,
)
from mailflow.pipeline.bounce_notices import member_warning, owners_notice
from mailflow.store.repository import Repository

BATCH = 500  # members settled in one transaction


def bounce_upkeep(repo: Repository, now: float, policy: BouncePolicy, fallback: str,
                  limit: int = BATCH) -> int:
    """One transaction of the periodic pass; returns how many messages it wrote.

    Blocking: runs on the writer thread.
    """
    generated: list[GeneratedMessage] = []
    planned: list[NewDelivery] = []
    events: list[Event] = []

    def send(item_list_id: int, priority: int, to: str, content: bytes) -> None:
        message = InboundMessage(
            id=ids.new_message_id(now), mail_from="", rcpt_tos=(to,),
            blob=content_hash(content), size=len(content), received_at=now, peer="",
            helo="", protocol=GENERATED)
        generated.append(GeneratedMessage(message, content))
        planned.append(NewDelivery(message.id, item_list_id, to, priority))

    with repo.expansion_transaction() as tx:
        owed = tx.bounces_owed(now, policy, limit)
        owners = repo.moderators(sorted({item.mailing_list.id for item in owed}),
                                 roles=(MemberRole.OWNER,)) if owed else {}
        for item in owed:
            target, member = item.mailing_list, item.address
            if item.action is Due.WARN:
                number = item.state.warnings_sent + 1
                send(target.id, target.priority, member,
                     member_warning(target, member, number, policy.warnings, now))
                told = owners.get(target.id) or ([fallback] if fallback else [])
                for owner in told if number == 1 else ():
                    send(target.id, target.priority, owner,
                         owners_notice(target, member, item.state.score, owner, now))
                events.append(Event("bounce_warning", f"<{member}> on {target.address}: "
                                    f"warning {number} of {policy.warnings}"))
            elif item.action is Due.REMOVE:
                events.append(Event("removed", f"<{member}> from {target.address}: "
                                    "disabled for bouncing, every warning sent"))
        tx.insert_generated(generated, now)
        tx.insert_deliveries(planned, now)
        tx.add_events(events, now)
        tx.settle_bounces(owed, now)
    return len(generated)
