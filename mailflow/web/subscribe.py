"""A list's public page with its subscribe form, and the page a confirmation link opens.

* ``GET /lists/{list}``: how to join and leave (by mail, and the form);
  ``POST /lists/{list}`` (form field ``address``) mails that address a confirmation, as
  a ``subscribe`` command by mail does -- and answers the same page whether or not the
  address is a member already, so the form tells nobody who is on the list.  Posts are
  limited per client (``limiter``: the HTTP ingress's sliding window, each post counted).
* ``GET /lists/{list}/confirm/{token}``: a page with a button, never a change -- link
  scanners and prefetching clients follow every URL of a message; ``POST`` of the same
  URL confirms (joins or leaves, with the welcome or goodbye mail).

The work is the list commands step's own (``services/subscriptions.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, Protocol
from urllib.parse import parse_qs

from fastapi import APIRouter, Request, Response
from starlette.requests import ClientDisconnect

from mailflow.confirm_tokens import BadToken
from mailflow.errors import InvalidInput, NotFound
from mailflow.http_body import read_limited
from mailflow.model import MailingList, SubscriptionPolicy
from mailflow.pipeline.send.list_links import list_path
from mailflow.pipeline.subscription_mail import robot_address
from mailflow.services.directory import validated_address
from mailflow.services.subscriptions import Subscriptions
from mailflow.store.runner import StoreRunner
from mailflow.web.public_pages import message, page

log = logging.getLogger(__name__)

BODY_LIMIT: Final = 4096  # bytes of a form post: an address is at most 320
_OUTCOMES: Final = {
    "joined": ("Welcome", "{address} is now a member of {list}. A welcome message is on "
                          "its way."),
    "left": ("Goodbye", "{address} is no longer a member of {list}."),
    "already": ("Already a member", "{address} is a member of {list} already."),
    "not_member": ("Not a member", "{address} is not a member of {list}: nothing to do."),
    "closed": ("List closed", "{list} takes no new members by request any more."),
    "requested": ("Request sent", "Your request to join {list} waits for its owners' "
                                  "approval; you will hear from the list."),
}


class Attempts(Protocol):
    """Posts per client in a sliding window (the HTTP ingress's ``FailedAuthLimiter``)."""

    def blocked_for(self, client: str) -> float: ...
    def failed(self, client: str) -> None: ...


def create_router(runner: StoreRunner, subscriptions: Subscriptions, limiter: Attempts,
                  body_timeout: float, on_queued: Callable[[], None]) -> APIRouter:
    router = APIRouter()

    async def mailing_list(address: str) -> MailingList:
        return await runner.read(subscriptions.mailing_list, address)

    def list_page(found: MailingList, status: int = 200, sent: str = "") -> Response:
        return page("list", status, title=found.name or found.address, list=found,
                    sent=sent, form_action=list_path(found.address),
                    closed=found.subscription is SubscriptionPolicy.CLOSED,
                    approve=found.subscription is SubscriptionPolicy.APPROVE,
                    links={suffix: robot_address(found, f"-{suffix}")
                           for suffix in ("join", "leave", "request", "owner")})

    @router.get("/lists/{address}", include_in_schema=False)
    async def show(address: str) -> Response:
        """How to join and leave the list, by mail and with the form."""
        try:
            return list_page(await mailing_list(address))
        except NotFound as exc:
            return message(404, "Unknown list", str(exc))

    @router.post("/lists/{address}", include_in_schema=False)
    async def subscribe(address: str, request: Request) -> Response:
        """Mail a confirmation to the address given (the same page either way)."""
        try:
            found = await mailing_list(address)
        except NotFound as exc:
            return message(404, "Unknown list", str(exc))
        client = request.client.host if request.client else ""
        wait = limiter.blocked_for(client)
        if wait > 0:
            return message(429, "Too many requests",
                           f"Please try again in {int(wait) + 1} seconds.")
        limiter.failed(client)  # every post counts, a good one too
        fields = await _form(request, body_timeout)
        if fields is None:
            return message(400, "Not understood", "The form did not arrive complete.")
        try:
            person = validated_address(fields.get("address", [""])[0])
        except InvalidInput as exc:
            return message(400, "Not a valid address", f"{exc}.",
                           back=list_path(found.address))
        if found.subscription is SubscriptionPolicy.CLOSED:
            return list_page(found, 403)
        if await runner.write(subscriptions.ask, found, person):
            on_queued()
        return list_page(found, sent=person)

    @router.get("/lists/{address}/confirm/{token}", include_in_schema=False)
    async def confirm_page(address: str, token: str) -> Response:
        """A button, never a change: scanners follow links."""
        try:
            found = await mailing_list(address)
            confirmed = subscriptions.check(found, token)
        except (NotFound, BadToken) as exc:
            return message(404, "Unknown or expired link", f"{exc}.")
        join = confirmed.action == "join"
        return page("confirm", title=("Join " if join else "Leave ") + (
            found.name or found.address), list=found, address=confirmed.address, join=join,
            form_action=f"{list_path(found.address)}/confirm/{token}")

    @router.post("/lists/{address}/confirm/{token}", include_in_schema=False)
    async def confirm(address: str, token: str) -> Response:
        try:
            found = await mailing_list(address)
            confirmed = subscriptions.check(found, token)
        except (NotFound, BadToken) as exc:
            return message(404, "Unknown or expired link", f"{exc}.")
        outcome = await runner.write(subscriptions.confirm, found, confirmed)
        on_queued()
        title, text = _OUTCOMES[outcome]
        return message(200, title, text.format(address=confirmed.address,
                                               list=found.name or found.address),
                       back=list_path(found.address))

    return router


async def _form(request: Request, seconds: float) -> dict[str, list[str]] | None:
    try:
        async with asyncio.timeout(seconds):
            body = await read_limited(request, BODY_LIMIT)
    except (TimeoutError, ClientDisconnect):
        return None
    if body is None:
        return None
    try:
        return parse_qs(body.decode("utf-8"), max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        return None
