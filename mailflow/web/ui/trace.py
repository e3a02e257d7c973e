"""The message trace page: the query ``mailflow trace`` runs (a queue id, a Message-ID,
or a sender's or recipient's address, in a time range), each message found shown as a
timeline from its receipt to each recipient's final reply (:mod:`.trace_timeline`).

A site admin sees every message; an owner or moderator the messages to their lists, and
of those only their lists' part (see :mod:`.trace_timeline`).  A search is a GET: it
changes nothing, and its address can be bookmarked or shared.
"""

from __future__ import annotations

import time
from typing import Annotated, Final

from fastapi import APIRouter, Query, Request, Response

from mailflow.errors import InvalidInput
from mailflow.services.timespec import parse_moment
from mailflow.services.trace import DEFAULT_LIMIT, MAX_LIMIT
from mailflow.web.ui import ops_format  # noqa: F401  (the templates' time filters)
from mailflow.web.ui.deps import FieldErrors, UiCaller, UiDeps, render
from mailflow.web.ui.trace_timeline import timelines

router = APIRouter()
SHOWN_MAX: Final = 100  # messages one page shows (the CLI's --limit goes to 1000)
Text = Annotated[str, Query(max_length=320)]
Moment = Annotated[str, Query(max_length=40)]


@router.get("/trace")
async def trace_page(request: Request, caller: UiCaller, deps: UiDeps, q: Text = "",
                     since: Moment = "", until: Moment = "",
                     limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT
                     ) -> Response:
    query = q.strip()
    limit = min(limit, SHOWN_MAX)
    errors = FieldErrors()
    found = []
    truncated = False
    searched = bool(query)
    now = time.time()
    moments: dict[str, float | None] = {"since": None, "until": None}
    for name, text in (("since", since), ("until", until)):
        if text.strip():
            try:
                moments[name] = parse_moment(text, now)
            except InvalidInput as exc:
                errors.add(name, exc)
    if searched and not errors:
        try:
            result = await deps.read(deps.trace.trace, query, since=moments["since"],
                                     until=moments["until"], limit=limit)
        except InvalidInput as exc:
            errors.add("until" if "range" in str(exc) else "q", exc)
        else:
            found = timelines(caller.principal, query, result.traces)
            truncated = result.truncated
    return render(request, "trace.html", caller, {
        "title": "Message trace", "q": query, "since": since, "until": until,
        "limit": limit, "found": found, "searched": searched, "truncated": truncated,
        "errors": errors}, status=422 if errors else 200)
