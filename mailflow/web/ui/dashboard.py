"""The dashboard: the queue by status, deliveries per hour over the last day (a bar
chart drawn here as SVG: no script, no chart library), recent failures, held posts.

The queue and its failures are the whole relay's, for site admins; a list owner or
moderator sees their lists and the posts held on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from fastapi import APIRouter, Request, Response

from mailflow.store.operations import OperationsStore
from mailflow.web.ui.deps import UiCaller, UiDeps, render

router = APIRouter()
HOURS: Final = 24
RECENT_FAILURES: Final = 10
# The chart's drawing box (SVG user units; the CSS scales it to the page's width).
WIDTH: Final = 720
HEIGHT: Final = 200
LEFT: Final = 40   # room for the count labels
BOTTOM: Final = 22  # room for the hour labels


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    width: float
    delivered_y: float
    delivered_h: float
    failed_y: float
    failed_h: float
    label: str  # for the title (a tooltip and what a screen reader may read)
    hour: str   # the axis label, every sixth bar


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    left: int
    base: float
    top_count: int
    bars: list[Bar]
    total_delivered: int
    total_failed: int


def hour_chart(delivered: list[int], failed: list[int], start: float) -> Chart:
    """Stacked bars (delivered, then failed on top) for each hour from ``start``."""
    peak = max([d + f for d, f in zip(delivered, failed, strict=True)] + [0])
    base = HEIGHT - BOTTOM
    scale = (base - 6) / max(peak, 1)
    step = (WIDTH - LEFT) / len(delivered)
    bars = []
    for i, (ok, bad) in enumerate(zip(delivered, failed, strict=True)):
        hour = datetime.fromtimestamp(start + i * 3600, UTC).strftime("%H:00")
        ok_h, bad_h = ok * scale, bad * scale
        bars.append(Bar(x=round(LEFT + i * step + 1, 1), width=round(step - 2, 1),
                        delivered_y=round(base - ok_h, 1), delivered_h=round(ok_h, 1),
                        failed_y=round(base - ok_h - bad_h, 1), failed_h=round(bad_h, 1),
                        label=f"{hour} UTC: {ok} delivered, {bad} failed",
                        hour=hour if i % 6 == 0 else ""))
    return Chart(WIDTH, HEIGHT, LEFT, base, peak, bars, sum(delivered), sum(failed))


@router.get("/")
async def dashboard(request: Request, caller: UiCaller, deps: UiDeps) -> Response:
    principal = caller.principal
    held = [h for h in await deps.read(deps.directory.held_messages)
            if principal.is_admin or any(principal.may_read_list(r) for r in h.rcpt_tos)]
    context: dict[str, object] = {"title": "Dashboard", "held_count": len(held)}
    if principal.is_admin:
        operations = OperationsStore(deps.runner.engines)
        now = deps.access.clock.now()
        start = (now // 3600 - (HOURS - 1)) * 3600  # the last 24 hours, this one included
        hourly = await deps.read(operations.hourly_outcomes, start, HOURS)
        context.update({
            "deliveries": await deps.read(deps.runner.repo.delivery_counts),
            "messages": await deps.read(deps.runner.repo.message_counts),
            "chart": hour_chart(hourly["delivered"], hourly["failed"], start),
            "failures": await deps.read(operations.recent_failures, RECENT_FAILURES)})
    else:
        found = await deps.read(deps.directory.lists)
        context["lists"] = [(m, n) for m, n in found if principal.may_read_list(m.address)]
    return render(request, "dashboard.html", caller, context)
