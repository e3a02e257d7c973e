"""``/held``: held posts (a posting policy or a filter rule held them), and the owner's or
moderator's decision, through the CLI's moderation service (``mailflow held``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from mailflow import addresses
from mailflow.errors import NotFound
from mailflow.model import HeldMessage
from mailflow.services.access import Principal
from mailflow.services.moderation import REASON_MAX_LENGTH
from mailflow.web.api.deps import Caller, Deps, Writer
from mailflow.web.api.pages import Cursor, Limit, Page, page_in_memory

router = APIRouter(tags=["held messages"])
MessageId = Annotated[str, Path(pattern=r"^[0-9a-f]{1,32}$", description="queue id")]


class HeldOut(BaseModel):
    id: str
    mail_from: str
    rcpt_tos: list[str]
    size: int
    received_at: float
    reason: str

    @classmethod
    def of(cls, held: HeldMessage) -> HeldOut:
        return cls(id=held.id, mail_from=held.mail_from, rcpt_tos=list(held.rcpt_tos),
                   size=held.size, received_at=held.received_at, reason=held.reason)


class Decision(BaseModel):
    id: str
    status: str
    added_to: list[str] = Field(default_factory=list,
                                description="approve with add_member: the lists the author "
                                            "was added to")
    notified: str | None = Field(default=None, description="reject: the author told why "
                                                           "(null: nobody to tell)")


class Approval(BaseModel):
    add_member: bool = Field(default=False, description=(
        "add the post's author (its From: address) to the lists first, so their next "
        "posts pass"))


class Rejection(BaseModel):
    reason: str = Field(default="", max_length=REASON_MAX_LENGTH * 2,
                        description="told to the author")


def _visible(caller: Principal, held: HeldMessage) -> bool:
    """Whether the caller moderates a list the post is held for (``team+tag@`` is
    ``team@``'s)."""
    return caller.is_admin or any(
        caller.may_read_list(addresses.untagged(addresses.canonical(r))[0])
        for r in held.rcpt_tos)


async def _held_for(deps: Deps, caller: Principal, message_id: str) -> HeldMessage:
    """The held message, if the caller moderates one of its lists (else: not found)."""
    caller.require_write()
    found = next((h for h in await deps.read(deps.directory.held_messages)
                  if h.id == message_id and _visible(caller, h)), None)
    if found is None:
        raise NotFound("message", message_id, f"no held message {message_id}")
    return found


@router.get("/held")
async def list_held(deps: Deps, caller: Caller, cursor: Cursor = None, limit: Limit = 50,
                    list_address: Annotated[str | None, Query(
                        alias="list", max_length=320,
                        description="only those to this list or alias")] = None
                    ) -> Page[HeldOut]:
    """Held messages, oldest first, each with why it is held."""
    if list_address is not None:
        list_address = (await deps.visible_list(caller, list_address)).address
    found = [h for h in await deps.read(deps.directory.held_messages, list_address)
             if _visible(caller, h)]
    items, more = page_in_memory(found, lambda h: f"{h.received_at:020.6f}|{h.id}",
                                 cursor, limit)
    return Page[HeldOut](items=[HeldOut.of(h) for h in items], next_cursor=more)


@router.post("/held/{message_id}/approve")
async def approve(message_id: MessageId, deps: Deps, caller: Writer,
                  body: Approval | None = None) -> Decision:
    """Deliver a held message: it is expanded as if it had just arrived; with
    ``add_member`` its author joins the lists first."""
    held = await _held_for(deps, caller, message_id)
    add_member = body is not None and body.add_member
    added = await deps.write(deps.moderation.approve, held.id, add_member=add_member)
    await deps.changed(caller, "held.approve", ",".join(held.rcpt_tos), held.id
                       + (f" author added to {','.join(added)}" if added else ""))
    return Decision(id=held.id, status="approved", added_to=added)


@router.post("/held/{message_id}/release")
async def release(message_id: MessageId, deps: Deps, caller: Writer) -> Decision:
    """Deliver a held message (as ``approve`` without ``add_member``)."""
    held = await _held_for(deps, caller, message_id)
    await deps.write(deps.moderation.approve, held.id)
    await deps.changed(caller, "held.release", ",".join(held.rcpt_tos), held.id)
    return Decision(id=held.id, status="released")


@router.post("/held/{message_id}/reject")
async def reject(message_id: MessageId, deps: Deps, caller: Writer,
                 body: Rejection | None = None) -> Decision:
    """Refuse a held message: nobody gets it, its author is told (with the reason)."""
    held = await _held_for(deps, caller, message_id)
    reason = "" if body is None else body.reason
    author = await deps.write(deps.moderation.reject, held.id, reason)
    await deps.changed(caller, "held.reject", ",".join(held.rcpt_tos),
                       f"{held.id} {reason[:200]!r}")
    return Decision(id=held.id, status="rejected", notified=author or None)


@router.post("/held/{message_id}/discard")
async def discard(message_id: MessageId, deps: Deps, caller: Writer) -> Decision:
    """Drop a held message silently: nothing is delivered, nobody is told."""
    held = await _held_for(deps, caller, message_id)
    await deps.write(deps.moderation.discard, held.id)
    await deps.changed(caller, "held.discard", ",".join(held.rcpt_tos), held.id)
    return Decision(id=held.id, status="discarded")
