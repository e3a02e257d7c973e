"""The audit log page: every change made through the API, the UI and the access
commands, newest first (site admins)."""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter, Query, Request, Response

from mailflow.web.ui.deps import UiAdmin, UiDeps, render

router = APIRouter()
PAGE_SIZE: Final = 50


@router.get("/audit")
async def audit_page(request: Request, caller: UiAdmin, deps: UiDeps,
                     actor: str = Query("", max_length=320),
                     target: str = Query("", max_length=320),
                     before: int | None = Query(None, ge=1, le=2**62)) -> Response:
    rows = await deps.read(deps.access.audit, PAGE_SIZE + 1, before, actor.strip() or None,
                           target.strip() or None)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    return render(request, "audit.html", caller, {
        "title": "Audit log", "entries": rows, "actor": actor, "target": target,
        "before": before, "next_before": rows[-1].id if more and rows else None})
