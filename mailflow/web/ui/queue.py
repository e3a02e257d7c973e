"""The queue page: deliveries by status, filtered as ``mailflow queue show`` filters
them, and the operator's actions (retry now, hold, release, delete) on the ticked
deliveries or on every one the filter selects, through the CLI's queue operations.

A site admin sees and acts on every delivery.  An owner sees the deliveries through
their lists and acts on those (the selection is narrowed to the list, as in
``POST /api/v1/queue/{action}``); a moderator only sees them.  A delete of more than
one delivery asks for a confirmation first, as ``mailflow queue delete`` wants ``--yes``.
"""

from __future__ import annotations

import time
from typing import Annotated, Final
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response

from mailflow.errors import ConfirmationNeeded, InvalidInput
from mailflow.model import DeliveryStatus, ListRole, QueueSelection, TokenScope
from mailflow.services.queue_operations import ACTIONS, selection_of
from mailflow.web.ui import ops_format  # noqa: F401  (the templates' time filters)
from mailflow.web.ui.deps import (
    FieldErrors,
    Flash,
    UiCaller,
    UiDeps,
    UiForm,
    UiSession,
    redirect,
    render,
    text_field,
    ui_path,
)

router = APIRouter()
MAX_IDS: Final = 1000     # deliveries ticked in one action
ID_MAX_CHARS: Final = 32  # a delivery id or a queue id
SHOWN: Final = 100        # deliveries a page lists
STATUSES: Final = tuple(s.value for s in DeliveryStatus)
DONE: Final = {"retry": "Retried", "hold": "Held", "release": "Released",
               "delete": "Deleted"}
FilterText = Annotated[str, Query(max_length=320)]


def _filters(status: str, list_address: str, domain: str, older_than: str) -> dict[str, str]:
    return {k: v.strip() for k, v in (("status", status), ("list", list_address),
                                       ("domain", domain), ("older_than", older_than))
            if v.strip()}


async def _scope(deps: UiDeps, caller: UiSession, list_address: str, *,
                 change: bool = False) -> str:
    """The list the caller's view or action is narrowed to ('' for a site admin who
    named none)."""
    principal = caller.principal
    if change:
        principal.require_write()
    if not list_address:
        if principal.is_admin:
            return ""
        owned = sorted(principal.roles)
        if not owned:
            principal.require_admin()  # nobody else has deliveries to see
        list_address = owned[0]
    return (await deps.visible_list(principal, list_address, change=change)).address


@router.get("/queue")
async def queue_page(request: Request, caller: UiCaller, deps: UiDeps,
                     status: FilterText = "", list_address: Annotated[str, Query(
                         alias="list", max_length=320)] = "",
                     domain: FilterText = "", older_than: FilterText = "") -> Response:
    principal = caller.principal
    errors = FieldErrors()
    scope = await _scope(deps, caller, list_address.strip())
    queue = deps.queue
    rows = []
    counts: dict[str, int] = {}
    try:
        selection = selection_of([status] if status else [], scope or None, domain or None,
                                 older_than or None, [], time.time())
    except InvalidInput as exc:
        errors.add("older_than" if older_than else "status", exc)
        selection = QueueSelection(list_address=scope or None)
    else:
        rows = await deps.read(queue.show, selection, SHOWN)
    if scope:
        for value in STATUSES:
            counts[value] = await deps.read(queue.count, QueueSelection(
                statuses=(DeliveryStatus(value),), list_address=scope))
    else:
        counts = await deps.read(deps.runner.repo.delivery_counts)
    choices = ([("", "All lists")] if principal.is_admin else []) + [
        (a, a) for a in sorted(principal.roles)]
    if scope and (scope, scope) not in choices:
        choices.append((scope, scope))
    may_act = principal.scope is TokenScope.WRITE and (
        principal.is_admin or principal.roles.get(scope) is ListRole.OWNER)
    return render(request, "queue.html", caller, {
        "title": "Queue", "rows": rows, "counts": counts,
        "status": status, "list_address": scope, "domain": domain,
        "older_than": older_than, "list_choices": choices, "shown": SHOWN,
        "may_act": may_act, "status_choices": [("", "Any"), *((s, s) for s in STATUSES)],
        "filters": _filters(status, scope, domain, older_than), "errors": errors},
        status=422 if errors else 200)


@router.post("/queue/act")
async def queue_act(request: Request, caller: UiCaller, deps: UiDeps, form: UiForm
                    ) -> Response:
    """One action on the ticked deliveries (``scope=ticked``) or on all the filter
    selects (``scope=filter``); a delete of more than one needs ``confirm=yes``."""
    action = text_field(form, "action", 10)
    if action not in ACTIONS:
        raise InvalidInput(f"invalid queue action {action!r}: one of {', '.join(ACTIONS)}")
    status = text_field(form, "status", 1000)
    domain = text_field(form, "domain", 1000)
    older_than = text_field(form, "older_than", 1000)
    target = await _scope(deps, caller, text_field(form, "list", 1000).strip(), change=True)
    filters = _filters(status, target, domain, older_than)
    back = ui_path("queue") + ("?" + urlencode(filters) if filters else "")
    ticked = [i.strip() for i in form.getlist("ids") if isinstance(i, str)][:MAX_IDS + 1]
    if len(ticked) > MAX_IDS:
        return redirect(request, back, Flash("error", f"at most {MAX_IDS} deliveries at once"))
    if any(not i or len(i) > ID_MAX_CHARS for i in ticked):
        raise InvalidInput("invalid delivery id: a number, or a queue id")
    whole = text_field(form, "scope", 10) == "filter"
    if not whole and not ticked:
        return redirect(request, back, Flash("error", "Tick the deliveries to act on, or "
                                                      "choose every one the filter selects."))
    queue = deps.queue
    selection = selection_of(
        [status] if status and whole else [], target or None,
        domain or None if whole else None, older_than or None if whole else None,
        [] if whole else ticked, time.time())
    confirmed = text_field(form, "confirm", 5) == "yes"
    try:
        change = await deps.write(queue.act, action, selection, confirmed=confirmed)
    except ConfirmationNeeded as exc:
        return render(request, "queue_confirm.html", caller, {
            "title": "Confirm the delete", "count": exc.count, "action": action,
            "scope": "filter" if whole else "ticked", "ticked": ticked,
            "fields": filters, "back": back})
    except InvalidInput as exc:
        return redirect(request, back, Flash("error", str(exc)))
    detail = " ".join(f"{k}={v!r}" for k, v in sorted(filters.items()))
    if not whole:
        detail = (detail + f" ids={len(ticked)}").strip()
    await deps.changed(caller.principal, f"queue.{action}", target or "*", detail)
    left = (f" ({change.skipped} selected left alone: in flight or not in a state to "
            f"{action})") if change.skipped else ""
    return redirect(request, back, Flash("ok" if change.changed else "warn",
                                         f"{DONE[action]} {change.changed} "
                                         f"deliveries{left}."))
