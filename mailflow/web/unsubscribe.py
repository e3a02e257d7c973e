"""A list's RFC 8058 one-click unsubscribe URL.

``POST /lists/{list}/unsubscribe/{token}`` with the body ``List-Unsubscribe=One-Click``
(as a mail client sends it, form-encoded or multipart) removes the member the token
names, without a login: the token is the credential (``unsubscribe_tokens.py``).  A
``GET`` of the same URL only shows a page with a button that makes that POST, so a link
scanner or a prefetching client that follows every URL of a message never unsubscribes
anyone.  (``GET /lists/{list}``, the page the List-Subscribe and shared copies'
List-Unsubscribe fields point at, is ``subscribe.py``'s.)

Answers: HTML for the pages a person sees (``public_pages.py``), problem+json for a
refused POST.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Final
from urllib.parse import parse_qs

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from starlette.requests import ClientDisconnect

from mailflow.errors import InvalidInput, MailflowError, NotFound
from mailflow.http_body import read_limited
from mailflow.model import ListKind, MailingList
from mailflow.services.directory import DirectoryService
from mailflow.store.runner import StoreRunner
from mailflow.unsubscribe_tokens import BadToken, UnsubscribeTokens
from mailflow.web.problems import error_problem
from mailflow.web.public_pages import message, page

log = logging.getLogger(__name__)

ONE_CLICK: Final = "One-Click"
BODY_LIMIT: Final = 4096  # bytes of a POST body: the one-click form is 26
_MULTIPART_ONE_CLICK: Final = re.compile(
    rb'name="?List-Unsubscribe"?\r?\n(?:[^\r\n]+\r?\n)*\r?\nOne-Click\r?\n', re.IGNORECASE)


def create_router(runner: StoreRunner, tokens: UnsubscribeTokens, body_timeout: float) -> APIRouter:
    router = APIRouter()
    directory = DirectoryService(runner.repo)

    async def mailing_list(address: str) -> MailingList:
        try:
            found = await runner.read(directory.get_list, address)
        except InvalidInput:
            raise NotFound("list", address) from None
        if found.kind is not ListKind.LIST:
            raise NotFound("list", address)
        return found

    @router.get("/lists/{address}/unsubscribe/{token}", response_class=HTMLResponse)
    async def confirm(address: str, token: str) -> Response:
        """A button, never an unsubscription: scanners follow links."""
        try:
            found = await mailing_list(address)
            member = tokens.member(found.address, token)
        except (NotFound, BadToken) as exc:
            return message(404, "Unknown link", str(exc))
        return page("unsubscribe", title=f"Unsubscribe from {found.name or found.address}",
                    list=found, member=member)

    @router.post("/lists/{address}/unsubscribe/{token}")
    async def one_click(address: str, token: str, request: Request) -> Response:
        """RFC 8058: the body ``List-Unsubscribe=One-Click`` unsubscribes the member."""
        try:
            found = await mailing_list(address)
            member = tokens.member(found.address, token)
        except BadToken as exc:
            return error_problem(NotFound("member", "", str(exc)))
        except MailflowError as exc:
            return error_problem(exc)
        try:
            async with asyncio.timeout(body_timeout):
                body = await read_limited(request, BODY_LIMIT)
        except (TimeoutError, ClientDisconnect):
            return error_problem(InvalidInput("the request body did not arrive"))
        if body is None or not _is_one_click(request, body):
            return error_problem(InvalidInput(
                "an unsubscribe POST has the body List-Unsubscribe=One-Click (RFC 8058)"))
        removed = await runner.write(directory.remove_members, found.address, [member])
        log.info("one-click unsubscribe from %s: %s", found.address,
                 "removed" if removed else "was not a member",
                 extra={"action": "unsubscribed", "list": found.address})
        return message(200, "Unsubscribed",
                       f"{member} gets no more mail from {found.name or found.address}.")

    return router


def _is_one_click(request: Request, body: bytes) -> bool:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        return _MULTIPART_ONE_CLICK.search(body) is not None
    try:
        fields = parse_qs(body.decode("ascii"), strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        return False
    return fields.get("List-Unsubscribe") == [ONE_CLICK]

