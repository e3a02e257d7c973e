"""The moderation queue: held posts of the caller's lists, each shown safely, and the
moderator's decision (approve, approve and add the author, reject with a reason mailed
to the author, discard) through the CLI's moderation service (``mailflow held``).

Who may see and decide is the API's rule (``/api/v1/held``): a site admin, or an owner
or moderator of one of the lists the post is held for; anyone else gets the same 404 as
for a post that does not exist.  The held message itself is shown by
:mod:`mailflow.web.ui.safe_message`: its HTML only inside a sandboxed frame served by
:func:`held_frame` under a CSP of its own.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Final

from fastapi import APIRouter, Path, Query, Request, Response

from mailflow import addresses
from mailflow.errors import InvalidInput, NotFound
from mailflow.model import HeldMessage, InboundMessage, SubscriptionRequest
from mailflow.services.access import Principal
from mailflow.services.moderation import REASON_MAX_LENGTH
from mailflow.web.ui import ops_format  # noqa: F401  (the templates' time filters)
from mailflow.web.ui.deps import (
    FieldErrors,
    Flash,
    UiCaller,
    UiDeps,
    UiForm,
    UiSession,
    redirect,
    text_field,
    ui_path,
)
from mailflow.web.ui.deps import render as render_page
from mailflow.web.ui.safe_message import FRAME_CSP, RenderedMessage, frame_document, render

router = APIRouter()
MessageId = Annotated[str, Path(pattern=r"^[0-9a-f]{1,32}$", description="queue id")]
ListFilter = Annotated[str | None, Query(alias="list", max_length=320)]
#: Headers of the frame's response (the UI's security headers leave a response that has
#: a policy of its own alone: ``setup.SecurityHeaders``).
FRAME_HEADERS: Final = {
    "Content-Security-Policy": FRAME_CSP,
    "X-Frame-Options": "SAMEORIGIN",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def lists_of(held: HeldMessage) -> list[str]:
    """The list and alias addresses a post is held for (its recipients, untagged)."""
    found: list[str] = []
    for rcpt in held.rcpt_tos:
        address = addresses.untagged(addresses.canonical(rcpt))[0]
        if address not in found:
            found.append(address)
    return found


def visible_lists(caller: Principal, held: HeldMessage) -> list[str]:
    return [a for a in lists_of(held) if caller.may_read_list(a)]


@dataclass(frozen=True, slots=True)
class HeldGroup:
    list_address: str
    posts: list[HeldMessage]


def grouped(caller: Principal, found: list[HeldMessage]) -> list[HeldGroup]:
    """The posts the caller may see, under each of their lists (a post held for two of
    them is under both), lists in address order, posts oldest first."""
    groups: dict[str, list[HeldMessage]] = {}
    for held in found:
        for address in visible_lists(caller, held):
            groups.setdefault(address, []).append(held)
    return [HeldGroup(a, groups[a]) for a in sorted(groups)]


async def held_for(deps: UiDeps, caller: Principal, message_id: str, *,
                   decide: bool = False) -> HeldMessage:
    """The held post, if the caller may see it (``decide``: and decide about it);
    otherwise not found, as if it did not exist."""
    if decide:
        caller.require_write()
    found = next((h for h in await deps.read(deps.directory.held_messages)
                  if h.id == message_id and (caller.is_admin or visible_lists(caller, h))),
                 None)
    if found is None:
        raise NotFound("message", message_id, f"no held message {message_id}")
    return found


async def rendered(deps: UiDeps, held: HeldMessage) -> RenderedMessage:
    """The post as the page shows it: read on a store thread, parsed on another (the
    parse must not hold a store connection)."""
    moderation = deps.moderation

    def content() -> bytes:
        message: InboundMessage = moderation.repo.held_message(held.id)[0]
        try:
            return moderation.read(message)
        except FileNotFoundError:
            return b""

    raw = await deps.read(content)
    return await asyncio.to_thread(render, raw)


@router.get("/moderation")
async def moderation_page(request: Request, caller: UiCaller, deps: UiDeps,
                          list_address: ListFilter = None) -> Response:
    principal = caller.principal
    if list_address:
        list_address = (await deps.visible_list(principal, list_address)).address
    found = await deps.read(deps.directory.held_messages, list_address or None)
    groups = grouped(principal, found)
    if list_address:
        groups = [g for g in groups if g.list_address == list_address]
    joins = [] if deps.commands is None else [
        r for r in await deps.read(deps.subscriptions.requests, list_address or None)
        if principal.may_read_list(r.list_address)]
    mine = sorted(principal.roles) if not principal.is_admin else sorted(
        {a for h in found for a in lists_of(h)} | ({list_address} if list_address else set()))
    return render_page(request, "moderation.html", caller, {
        "title": "Moderation", "groups": groups, "list_address": list_address or "",
        "list_choices": [(a, a) for a in mine], "total": sum(len(g.posts) for g in groups),
        "requests": joins, "reason_max": REASON_MAX_LENGTH})


async def _detail(request: Request, caller: UiSession, deps: UiDeps, held: HeldMessage,
                  *, reason: str = "", errors: FieldErrors | None = None,
                  status: int = 200) -> Response:
    shown = await rendered(deps, held)
    return render_page(request, "held.html", caller, {
        "title": f"Held post {held.id}", "held": held, "message": shown,
        "lists": visible_lists(caller.principal, held), "reason": reason,
        "reason_max": REASON_MAX_LENGTH, "errors": errors or FieldErrors()}, status=status)


@router.get("/moderation/{message_id}")
async def held_page(message_id: MessageId, request: Request, caller: UiCaller,
                    deps: UiDeps) -> Response:
    held = await held_for(deps, caller.principal, message_id)
    return await _detail(request, caller, deps, held)


@router.get("/moderation/{message_id}/frame")
async def held_frame(message_id: MessageId, caller: UiCaller, deps: UiDeps) -> Response:
    """The post's sanitized HTML, alone, for the sandboxed frame of its page."""
    held = await held_for(deps, caller.principal, message_id)
    shown = await rendered(deps, held)
    return Response(frame_document(shown), media_type="text/html; charset=utf-8",
                    headers=FRAME_HEADERS)


def _lists_text(caller: Principal, held: HeldMessage) -> str:
    return ",".join(visible_lists(caller, held)) or ",".join(held.rcpt_tos)


@router.post("/moderation/{message_id}/approve")
async def approve(message_id: MessageId, request: Request, caller: UiCaller, deps: UiDeps,
                  form: UiForm) -> Response:
    """Deliver the post (as ``mailflow held approve [--add-member]``)."""
    held = await held_for(deps, caller.principal, message_id, decide=True)
    add_member = text_field(form, "add_member", 10) == "on"
    added = await deps.write(deps.moderation.approve, held.id, add_member=add_member)
    await deps.changed(caller.principal, "held.approve", _lists_text(caller.principal, held),
                       held.id + (f" author added to {','.join(added)}" if added else ""))
    text = f"Approved the post from {held.mail_from or 'the null sender'}"
    text += f"; its author is now a member of {', '.join(added)}." if added else "."
    return redirect(request, ui_path("moderation"), Flash("ok", text))


@router.post("/moderation/{message_id}/reject")
async def reject(message_id: MessageId, request: Request, caller: UiCaller, deps: UiDeps,
                 form: UiForm) -> Response:
    """Refuse the post; its author is told why (``mailflow held reject --reason``)."""
    held = await held_for(deps, caller.principal, message_id, decide=True)
    reason = text_field(form, "reason", REASON_MAX_LENGTH * 2)
    try:
        author = await deps.write(deps.moderation.reject, held.id, reason)
    except InvalidInput as exc:
        errors = FieldErrors()
        errors.add("reason", exc)
        return await _detail(request, caller, deps, held, reason=reason, errors=errors,
                             status=422)
    await deps.changed(caller.principal, "held.reject", _lists_text(caller.principal, held),
                       f"{held.id} {reason.strip()[:200]!r}")
    told = f"; {author} is told why." if author else "; there is nobody to tell."
    return redirect(request, ui_path("moderation"), Flash("ok", "Rejected the post" + told))


@router.post("/moderation/{message_id}/discard")
async def discard(message_id: MessageId, request: Request, caller: UiCaller, deps: UiDeps
                  ) -> Response:
    """Drop the post silently (``mailflow held discard``)."""
    held = await held_for(deps, caller.principal, message_id, decide=True)
    await deps.write(deps.moderation.discard, held.id)
    await deps.changed(caller.principal, "held.discard", _lists_text(caller.principal, held),
                       held.id)
    return redirect(request, ui_path("moderation"),
                    Flash("ok", "Discarded the post: nobody gets it, nobody is told."))


# -- requests to join ``approve`` lists (``mailflow requests``, ``/api/v1/subscription-
# requests``): the same rule, a request on a list not the caller's is not found.

RequestId = Annotated[int, Path(ge=1, le=2**62)]


async def request_for(deps: UiDeps, caller: Principal,
                      request_id: int) -> SubscriptionRequest:
    caller.require_write()
    found = next((r for r in await deps.read(deps.subscriptions.requests)
                  if r.id == request_id and caller.may_read_list(r.list_address)), None)
    if found is None:
        raise NotFound("request", str(request_id), f"no request {request_id} waiting")
    return found


@router.post("/subscription-requests/{request_id}/approve")
async def approve_request(request_id: RequestId, request: Request, caller: UiCaller,
                          deps: UiDeps, form: UiForm) -> Response:
    """Add the address that asked, and welcome it (``mailflow requests approve``)."""
    await request_for(deps, caller.principal, request_id)
    done = await deps.write(deps.subscriptions.approve, request_id)
    await deps.changed(caller.principal, "request.approve", done.list_address,
                       f"{done.id} {done.address}")
    return redirect(request, ui_path("moderation"), Flash(
        "ok", f"{done.address} is now a member of {done.list_address}; welcome queued."))


@router.post("/subscription-requests/{request_id}/reject")
async def reject_request(request_id: RequestId, request: Request, caller: UiCaller,
                         deps: UiDeps, form: UiForm) -> Response:
    """Refuse the request; the address is told why (``mailflow requests reject``)."""
    await request_for(deps, caller.principal, request_id)
    reason = text_field(form, "reason", REASON_MAX_LENGTH * 2)
    try:
        done = await deps.write(deps.subscriptions.reject, request_id, reason)
    except InvalidInput as exc:
        return redirect(request, ui_path("moderation"), Flash("error", str(exc)))
    await deps.changed(caller.principal, "request.reject", done.list_address,
                       f"{done.id} {done.address} {reason.strip()[:200]!r}")
    return redirect(request, ui_path("moderation"), Flash(
        "ok", f"Rejected the request of {done.address}; they are told why."))
