"""``/lists``: lists and aliases with their settings.

A site admin sees and creates every list; an owner or moderator sees only theirs, and
only an owner changes one.  ``PATCH`` takes every setting ``mailflow list update``
takes (the templates as text instead of files), through the same directory call.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from mailflow.model import (
    DmarcMode,
    ForwardStyle,
    ListKind,
    MailingList,
    NonMemberAction,
    PostingPolicy,
)
from mailflow.web.api.deps import AdminWriter, Caller, Deps, Writer
from mailflow.web.api.pages import Cursor, Limit, Page, page_in_memory

router = APIRouter(tags=["lists"])
ListAddress = Annotated[str, Path(max_length=320, description="the list's or alias's address",
                                  examples=["team@example.org"],
                                  json_schema_extra={"format": "email"})]


class ListOut(BaseModel):
    address: str
    kind: ListKind
    name: str
    priority: int
    forward_style: ForwardStyle
    created_at: float
    member_count: int | None = None
    dmarc: DmarcMode
    posting: PostingPolicy
    non_member_action: NonMemberAction
    hold_days: int
    subject_prefix: str
    reply_to: str = Field(description="none, list, or an address")
    header_template: str
    footer_template: str
    archive_url: str
    personalize: bool
    bounce_threshold: float
    list_id: str
    bounces_address: str

    @classmethod
    def of(cls, found: MailingList, count: int | None = None) -> ListOut:
        decoration = found.decoration
        return cls(address=found.address, kind=found.kind, name=found.name,
                   priority=found.priority, forward_style=found.forward_style,
                   created_at=found.created_at, member_count=count, dmarc=found.dmarc,
                   posting=found.posting, non_member_action=found.non_member_action,
                   hold_days=found.hold_days, subject_prefix=decoration.subject_prefix,
                   reply_to=decoration.reply_to, header_template=decoration.header_template,
                   footer_template=decoration.footer_template,
                   archive_url=decoration.archive_url, personalize=found.personalize,
                   bounce_threshold=found.bounce_threshold, list_id=found.list_id,
                   bounces_address=found.bounces_address)


class ListIn(BaseModel):
    address: str = Field(max_length=320, examples=["team@example.org"])
    kind: ListKind = ListKind.LIST
    name: str = Field(default="", max_length=200)
    priority: int = Field(default=0, ge=-1000, le=1000)


# Generous bounds: the directory says what it accepts, in the CLI's words; these only
# keep a request small.
_TEXT_MAX = 1000
_TEMPLATE_MAX = 100_000


class ListChange(BaseModel):
    """The settings to change (those of ``mailflow list update``); those left out stay
    as they are, ``""`` clears a text."""

    kind: ListKind | None = None
    name: str | None = Field(default=None, max_length=200)
    priority: int | None = Field(default=None, ge=-1000, le=1000)
    forward_style: ForwardStyle | None = None
    dmarc: DmarcMode | None = None
    posting: PostingPolicy | None = None
    non_member_action: NonMemberAction | None = None
    hold_days: int | None = Field(default=None, ge=-10**6, le=10**6)
    subject_prefix: str | None = Field(default=None, max_length=_TEXT_MAX)
    reply_to: str | None = Field(default=None, max_length=_TEXT_MAX,
                                 description="none, list, or an address")
    header_template: str | None = Field(default=None, max_length=_TEMPLATE_MAX)
    footer_template: str | None = Field(default=None, max_length=_TEMPLATE_MAX)
    archive_url: str | None = Field(default=None, max_length=_TEXT_MAX)
    personalize: bool | None = None
    bounce_threshold: float | None = Field(default=None, ge=-10**6, le=10**6,
                                           allow_inf_nan=False)

    def decoration(self) -> dict[str, str]:
        return {key: value for key, value in (
            ("subject_prefix", self.subject_prefix), ("reply_to", self.reply_to),
            ("header_template", self.header_template),
            ("footer_template", self.footer_template), ("archive_url", self.archive_url))
            if value is not None}


class ListDeleted(BaseModel):
    address: str
    failed_deliveries: int = Field(description="pending deliveries that failed with it")


@router.get("/lists")
async def list_lists(deps: Deps, caller: Caller, cursor: Cursor = None, limit: Limit = 50,
                     kind: Annotated[ListKind | None, Query()] = None,
                     q: Annotated[str, Query(max_length=320,
                                             description="address or name contains")] = ""
                     ) -> Page[ListOut]:
    """Lists and aliases by address (for an owner or moderator: theirs), with member counts."""
    found = await deps.read(deps.directory.lists)
    needle = q.strip().lower()
    visible = [(m, n) for m, n in found if caller.may_read_list(m.address)
               and (kind is None or m.kind is kind)
               and (not needle or needle in m.address or needle in m.name.lower())]
    items, more = page_in_memory(visible, lambda pair: pair[0].address, cursor, limit)
    return Page[ListOut](items=[ListOut.of(m, n) for m, n in items], next_cursor=more)


@router.post("/lists", status_code=201)
async def create_list(body: ListIn, deps: Deps, caller: AdminWriter) -> ListOut:
    created = await deps.write(deps.directory.create_list, body.address, kind=body.kind,
                               name=body.name, priority=body.priority)
    await deps.changed(caller, "list.create", created.address, f"kind={created.kind.value}")
    return ListOut.of(created, 0)


@router.get("/lists/{address}")
async def get_list(address: ListAddress, deps: Deps, caller: Caller) -> ListOut:
    found = await deps.read(deps.directory.get_list, address)
    caller.require_list(found.address)
    return ListOut.of(found)


@router.patch("/lists/{address}")
async def update_list(address: ListAddress, body: ListChange, deps: Deps,
                      caller: Writer) -> ListOut:
    found = await deps.read(deps.directory.get_list, address)
    caller.require_list(found.address, change=True)
    changed = await deps.write(
        deps.directory.update_list, found.address, kind=body.kind, name=body.name,
        priority=body.priority, forward_style=body.forward_style, dmarc=body.dmarc,
        posting=body.posting, non_member_action=body.non_member_action,
        hold_days=body.hold_days, decoration=body.decoration(),
        personalize=body.personalize, bounce_threshold=body.bounce_threshold)
    given = body.model_dump(exclude_none=True, mode="json")
    await deps.changed(caller, "list.update", changed.address, " ".join(
        f"{k}={v!r}" if "template" not in k else f"{k}=({len(v)} characters)"
        for k, v in sorted(given.items())))
    return ListOut.of(changed)


@router.delete("/lists/{address}")
async def delete_list(address: ListAddress, deps: Deps, caller: AdminWriter) -> ListDeleted:
    """Delete a list or alias with its members and rules; its pending deliveries fail."""
    found = await deps.read(deps.directory.get_list, address)
    failed = await deps.write(deps.directory.delete_list, found.address)
    await deps.changed(caller, "list.delete", found.address, f"failed_deliveries={failed}")
    return ListDeleted(address=found.address, failed_deliveries=failed)
