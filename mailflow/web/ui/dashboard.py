"""The dashboard: the queue by status, deliveries per hour, recent failures, held posts."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from mailflow.web.ui.deps import UiCaller, UiDeps, render

router = APIRouter()


@router.get("/")
async def dashboard(request: Request, caller: UiCaller, deps: UiDeps) -> Response:
    deliveries = await deps.read(deps.runner.repo.delivery_counts)
    messages = await deps.read(deps.runner.repo.message_counts)
    return render(request, "dashboard.html", caller, {
        "title": "Dashboard", "deliveries": sorted(deliveries.items()),
        "messages": sorted(messages.items())})
