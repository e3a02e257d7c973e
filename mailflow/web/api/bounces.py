"""``/bounces`` and ``/suppressions``: bounces counted against members, and the addresses
no list sends to (``mailflow bounces``, ``mailflow suppress``).

A site admin sees every bounce and suppression and changes the global ones (every
list); an owner or moderator sees those of their lists, and an owner changes their
list's suppressions.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field

from mailflow.errors import InvalidInput
from mailflow.model import BounceEventRow, Suppression
from mailflow.web.api.deps import Caller, Deps, Writer
from mailflow.web.api.pages import Cursor, Limit, Page, decode_cursor, page_in_memory, trimmed

router = APIRouter(tags=["bounces"])
ListFilter = Annotated[str | None, Query(alias="list", max_length=320,
                                         description="only those of this list")]
Address = Annotated[str, Path(max_length=320, json_schema_extra={"format": "email"})]
# Newest first in a collection paged by an ascending key.
_FAR_FUTURE = 10.0 ** 11


class BounceOut(BaseModel):
    list: str
    address: str
    kind: str
    source: str
    counted: bool
    detail: str
    at: float

    @classmethod
    def of(cls, b: BounceEventRow) -> BounceOut:
        return cls(list=b.list_address, address=b.address, kind=b.kind, source=b.source,
                   counted=b.counted, detail=b.detail, at=b.created_at)


class SuppressionOut(BaseModel):
    address: str
    list: str | None = Field(description="null: every list")
    reason: str
    created_at: float

    @classmethod
    def of(cls, s: Suppression) -> SuppressionOut:
        return cls(address=s.address, list=s.target or None, reason=s.reason,
                   created_at=s.created_at)


class SuppressionIn(BaseModel):
    address: str = Field(max_length=320, examples=["gone@example.net"])
    list: str | None = Field(default=None, max_length=320,
                             description="for this list only (default: every list)")
    reason: str = Field(default="", max_length=1000, description="a note kept with it")


class Suppressed(BaseModel):
    suppression: SuppressionOut
    added: bool = Field(description="false: it was suppressed already")


@router.get("/bounces")
async def list_bounces(deps: Deps, caller: Caller, cursor: Cursor = None, limit: Limit = 50,
                       list_address: ListFilter = None) -> Page[BounceOut]:
    """The newest bounces and complaints (at most 1,000), newest first; an owner or
    moderator names their list."""
    target = await deps.list_scope(caller, list_address)
    found = await deps.read(deps.directory.bounce_events, target)
    items, more = page_in_memory(
        found, lambda b: f"{_FAR_FUTURE - b.created_at:020.6f}|{b.list_address}|{b.address}",
        cursor, limit)
    return Page[BounceOut](items=[BounceOut.of(b) for b in items], next_cursor=more)


@router.get("/suppressions")
async def list_suppressions(deps: Deps, caller: Caller, cursor: Cursor = None,
                            limit: Limit = 50, list_address: ListFilter = None
                            ) -> Page[SuppressionOut]:
    """Suppressed addresses by address: every entry (a site admin), or one list's."""
    target = await deps.list_scope(caller, list_address)
    key = decode_cursor(cursor)
    address, tab, entry_target = key.partition("\t")
    if key and not tab:
        raise InvalidInput(f"invalid cursor {cursor!r}: pass next_cursor as it came")
    rows = await deps.read(deps.directory.suppressions_page, target, limit + 1,
                           (address, entry_target) if key else None)
    items, more = trimmed(rows, limit, lambda s: f"{s.address}\t{s.target}")
    return Page[SuppressionOut](items=[SuppressionOut.of(s) for s in items],
                                next_cursor=more)


@router.post("/suppressions", status_code=201)
async def add_suppression(body: SuppressionIn, deps: Deps, caller: Writer) -> Suppressed:
    """Send the address nothing from now on (every list, or one)."""
    target = await deps.list_scope(caller, body.list, change=True)
    added = await deps.write(deps.directory.suppress, body.address, target, body.reason)
    entries = await deps.read(deps.directory.suppressions, target or "")
    address = body.address.strip().lower()
    entry = next((e for e in entries if e.address == address),
                 Suppression(address, target or "", body.reason))
    await deps.changed(caller, "suppression.add", target or "*", entry.address)
    return Suppressed(suppression=SuppressionOut.of(entry), added=added)


@router.delete("/suppressions/{address}", status_code=204)
async def remove_suppression(address: Address, deps: Deps, caller: Writer,
                             list_address: ListFilter = None) -> Response:
    """Send the address mail again (the global entry, or ``list``'s)."""
    target = await deps.list_scope(caller, list_address, change=True)
    await deps.write(deps.directory.unsuppress, address, target)
    await deps.changed(caller, "suppression.remove", target or "*", address)
    return Response(status_code=204)
