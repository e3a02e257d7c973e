"""``/queue`` and ``/deliveries``: what the relay has still to deliver, read-only."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from mailflow.model import DeliveryRow, DeliveryStatus
from mailflow.web.api.deps import Admin, Deps
from mailflow.web.api.pages import Cursor, Limit, Page, decode_id_cursor, trimmed

router = APIRouter(tags=["queue"])


class QueueCounts(BaseModel):
    deliveries: dict[str, int]
    messages: dict[str, int]


class DeliveryOut(BaseModel):
    id: int
    message_id: str
    list_address: str | None
    recipient: str
    status: str
    attempts: int
    due_at: float
    created_at: float
    updated_at: float
    last_reply: str | None

    @classmethod
    def of(cls, row: DeliveryRow) -> DeliveryOut:
        return cls(id=row.id, message_id=row.message_id, list_address=row.list_address,
                   recipient=row.recipient, status=row.status, attempts=row.attempts,
                   due_at=row.due_at, created_at=row.created_at, updated_at=row.updated_at,
                   last_reply=row.last_reply)


@router.get("/queue")
async def queue_counts(deps: Deps, caller: Admin) -> QueueCounts:
    """Deliveries and messages by status."""
    deliveries = await deps.read(deps.runner.repo.delivery_counts)
    messages = await deps.read(deps.runner.repo.message_counts)
    return QueueCounts(deliveries=deliveries, messages=messages)


@router.get("/deliveries")
async def list_deliveries(deps: Deps, caller: Admin, cursor: Cursor = None,
                          limit: Limit = 50, status: DeliveryStatus | None = None
                          ) -> Page[DeliveryOut]:
    """Deliveries newest first, of one status if given."""
    rows = await deps.read(deps.runner.repo.deliveries_page, limit + 1,
                           decode_id_cursor(cursor), None if status is None else status.value)
    items, more = trimmed(rows, limit, lambda d: d.id)
    return Page[DeliveryOut](items=[DeliveryOut.of(d) for d in items], next_cursor=more)
