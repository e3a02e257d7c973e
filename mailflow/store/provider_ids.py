"""Deliveries by the id their egress provider gave the copy (``provider_message_id``).

Amazon SES answers each send with a MessageId of its own, and every later notification
about that copy (bounce, complaint, delivery) and its bounce mails name that id, not
ours.  One SES send carries up to 50 recipients, so one id finds up to 50 deliveries;
the notification's recipients say which of them it concerns.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, bindparam, func, select, update

from mailflow.model import DeliveryStatus, ProviderFeedback, SentCopy
from mailflow.store.tables import deliveries, lists

_SET_PROVIDER_ID = (update(deliveries).where(deliveries.c.id == bindparam("b_id"))
                    .values(provider_message_id=bindparam("b_provider_id")))


def record_provider_ids(conn: Connection, pairs: Sequence[tuple[int, str]]) -> None:
    """Keep each (delivery id, provider id) just delivered; ids beyond 100 characters
    are cut (no provider's are that long)."""
    if pairs:
        conn.execute(_SET_PROVIDER_ID, [{"b_id": delivery_id, "b_provider_id": pid[:100]}
                                        for delivery_id, pid in pairs])


def sent_copies(conn: Connection, provider_id: str,
                recipients: Sequence[str]) -> list[SentCopy]:
    """The deliveries sent as ``provider_id`` to any of ``recipients`` (case-insensitive:
    a provider may report an address in another case than we sent it)."""
    wanted = [r.lower() for r in recipients]
    rows = conn.execute(
        select(deliveries.c.id, deliveries.c.message_id, deliveries.c.list_id,
               deliveries.c.recipient)
        .where(deliveries.c.provider_message_id == provider_id[:100])
        .where(func.lower(deliveries.c.recipient).in_(wanted))
        .order_by(deliveries.c.id))
    return [SentCopy(row.id, row.message_id, row.list_id, row.recipient) for row in rows]


def fail_delivered(conn: Connection, now: float,
                   failed: Sequence[tuple[SentCopy, ProviderFeedback]]) -> None:
    """Turn deliveries the provider took into failures: the destination refused them."""
    if failed:
        conn.execute(
            update(deliveries).where(deliveries.c.id == bindparam("b_id"))
            .where(deliveries.c.status == DeliveryStatus.DELIVERED.value)
            .values(status=DeliveryStatus.FAILED.value, last_reply=bindparam("b_reply"),
                    updated_at=now, lease_owner=None),
            [{"b_id": copy.delivery_id, "b_reply": feedback.detail[:1000]}
             for copy, feedback in failed])


def list_address_sent_as(conn: Connection, provider_ids: Sequence[str]) -> str | None:
    """The address of the list or alias whose copy one of ``provider_ids`` is, or None."""
    if not provider_ids:
        return None
    row = conn.execute(
        select(lists.c.address).select_from(deliveries.join(
            lists, lists.c.id == deliveries.c.list_id))
        .where(deliveries.c.provider_message_id.in_([p[:100] for p in provider_ids]))
        .order_by(deliveries.c.id).limit(1)).first()
    return None if row is None else str(row.address)
