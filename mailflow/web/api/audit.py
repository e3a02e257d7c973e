"""``/audit``: every change made through the API (and the access commands): who, what,
on what, when; newest first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from mailflow.model import AuditEntry
from mailflow.web.api.deps import Admin, Deps
from mailflow.web.api.pages import Cursor, Limit, Page, decode_id_cursor, trimmed

router = APIRouter(tags=["audit"])


class AuditOut(BaseModel):
    id: int
    created_at: float
    actor: str
    action: str
    target: str
    detail: str

    @classmethod
    def of(cls, entry: AuditEntry) -> AuditOut:
        return cls(id=entry.id, created_at=entry.created_at, actor=entry.actor,
                   action=entry.action, target=entry.target, detail=entry.detail)


@router.get("/audit")
async def list_audit(deps: Deps, caller: Admin, cursor: Cursor = None, limit: Limit = 50,
                     actor: Annotated[str | None, Query(max_length=320)] = None,
                     target: Annotated[str | None, Query(max_length=320)] = None
                     ) -> Page[AuditOut]:
    rows = await deps.read(deps.access.audit, limit + 1, decode_id_cursor(cursor), actor,
                           target)
    items, more = trimmed(rows, limit, lambda e: e.id)
    return Page[AuditOut](items=[AuditOut.of(e) for e in items], next_cursor=more)
