"""``/held``: messages a filter rule holds, and the owner's or moderator's decision."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from mailflow.errors import NotFound
from mailflow.model import HeldMessage
from mailflow.services.access import Principal
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


def _visible(caller: Principal, held: HeldMessage) -> bool:
    return caller.is_admin or any(caller.may_read_list(r) for r in held.rcpt_tos)


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
    found = [h for h in await deps.read(deps.directory.held_messages)
             if _visible(caller, h)
             and (list_address is None or list_address.strip().lower() in h.rcpt_tos)]
    items, more = page_in_memory(found, lambda h: f"{h.received_at:020.6f}|{h.id}",
                                 cursor, limit)
    return Page[HeldOut](items=[HeldOut.of(h) for h in items], next_cursor=more)


@router.post("/held/{message_id}/release")
async def release(message_id: MessageId, deps: Deps, caller: Writer) -> Decision:
    """Deliver a held message: it is expanded as if it had just arrived."""
    held = await _held_for(deps, caller, message_id)
    await deps.write(deps.directory.release_held, held.id)
    await deps.changed(caller, "held.release", ",".join(held.rcpt_tos), held.id)
    return Decision(id=held.id, status="released")


@router.post("/held/{message_id}/discard")
async def discard(message_id: MessageId, deps: Deps, caller: Writer) -> Decision:
    """Drop a held message: nothing is delivered."""
    held = await _held_for(deps, caller, message_id)
    await deps.write(deps.directory.discard_held, held.id)
    await deps.changed(caller, "held.discard", ",".join(held.rcpt_tos), held.id)
    return Decision(id=held.id, status="discarded")
