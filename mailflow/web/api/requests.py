"""``/subscription-requests``: requests to join lists whose owners approve subscriptions
(``--subscription approve``), decided through the CLI's service (``mailflow requests``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from mailflow.errors import NotFound
from mailflow.model import SubscriptionRequest
from mailflow.services.access import Principal
from mailflow.services.moderation import REASON_MAX_LENGTH
from mailflow.web.api.deps import ApiDeps, Caller, Deps, Writer
from mailflow.web.api.pages import Cursor, Limit, Page, page_in_memory

router = APIRouter(tags=["subscription requests"])
RequestId = Annotated[int, Path(ge=1, le=2**62, description="the request's id")]


class RequestOut(BaseModel):
    id: int
    list: str
    address: str
    created_at: float

    @classmethod
    def of(cls, request: SubscriptionRequest) -> RequestOut:
        return cls(id=request.id, list=request.list_address, address=request.address,
                   created_at=request.created_at)


class RequestDecision(BaseModel):
    id: int
    list: str
    address: str
    status: str = Field(description="approved (now a member, welcomed) or rejected "
                                    "(told, with the reason)")


class RequestRejection(BaseModel):
    reason: str = Field(default="", max_length=REASON_MAX_LENGTH * 2,
                        description="told to the address")


async def _request_for(deps: ApiDeps, caller: Principal,
                       request_id: int) -> SubscriptionRequest:
    """The waiting request, if the caller owns or moderates its list (else: not found,
    as if it did not exist)."""
    caller.require_write()
    found = next((r for r in await deps.read(deps.subscriptions.requests)
                  if r.id == request_id and caller.may_read_list(r.list_address)), None)
    if found is None:
        raise NotFound("request", str(request_id), f"no request {request_id} waiting")
    caller.require_list(found.list_address, moderate=True)
    return found


@router.get("/subscription-requests")
async def list_requests(deps: Deps, caller: Caller, cursor: Cursor = None, limit: Limit = 50,
                        list_address: Annotated[str | None, Query(
                            alias="list", max_length=320,
                            description="only the requests to this list")] = None
                        ) -> Page[RequestOut]:
    """Requests waiting for an owner or moderator, oldest first."""
    if list_address is not None:
        list_address = (await deps.visible_list(caller, list_address)).address
    found = [r for r in await deps.read(deps.subscriptions.requests, list_address)
             if caller.may_read_list(r.list_address)]
    items, more = page_in_memory(found, lambda r: f"{r.created_at:020.6f}|{r.id:020d}",
                                 cursor, limit)
    return Page[RequestOut](items=[RequestOut.of(r) for r in items], next_cursor=more)


@router.post("/subscription-requests/{request_id}/approve")
async def approve(request_id: RequestId, deps: Deps, caller: Writer) -> RequestDecision:
    """Add the address that asked as a member, and mail it the list's welcome."""
    await _request_for(deps, caller, request_id)
    done = await deps.write(deps.subscriptions.approve, request_id)
    await deps.changed(caller, "request.approve", done.list_address,
                       f"{done.id} {done.address}")
    return RequestDecision(id=done.id, list=done.list_address, address=done.address,
                           status="approved")


@router.post("/subscription-requests/{request_id}/reject")
async def reject(request_id: RequestId, deps: Deps, caller: Writer,
                 body: RequestRejection | None = None) -> RequestDecision:
    """Refuse a request: the address is told (with the reason)."""
    await _request_for(deps, caller, request_id)
    reason = "" if body is None else body.reason
    done = await deps.write(deps.subscriptions.reject, request_id, reason)
    await deps.changed(caller, "request.reject", done.list_address,
                       f"{done.id} {done.address} {reason[:200]!r}")
    return RequestDecision(id=done.id, list=done.list_address, address=done.address,
                           status="rejected")
