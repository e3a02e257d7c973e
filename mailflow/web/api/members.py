"""``/lists/{address}/members``: a roster, page by page; adding, removing, CSV in and out.

The import takes the CSV file as the request body (``text/csv``), adds its valid rows
and reports every invalid one by its row, so a file with one typo still brings in the
rest and says what to fix; ``dry_run=true`` only reports.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import io
import re
from collections.abc import AsyncIterator
from typing import Annotated, Final, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from mailflow.errors import InputTimeout, InvalidInput, MessageTooLarge, NotFound
from mailflow.http_body import read_limited
from mailflow.model import Member, MemberRole, MemberStatus
from mailflow.services.member_csv import MemberImport, read_member_rows
from mailflow.web.api.deps import Caller, Deps, Writer
from mailflow.web.api.lists import ListAddress
from mailflow.web.api.pages import Cursor, Limit, Page, decode_cursor, trimmed

router = APIRouter(tags=["members"])
MAX_IMPORT_BYTES: Final = 64 * 1024 * 1024
EXPORT_BATCH: Final = 5000
MAX_MEMBERS_PER_REQUEST: Final = 1000
_UNSAFE_IN_FILENAME: Final = re.compile(r"[^A-Za-z0-9._-]")
MemberAddress = Annotated[str, Path(max_length=320, json_schema_extra={"format": "email"})]


class MemberOut(BaseModel):
    address: str
    name: str
    status: MemberStatus
    role: MemberRole
    created_at: float
    bounce_score: float
    last_bounce_at: float | None

    @classmethod
    def of(cls, member: Member) -> MemberOut:
        return cls(address=member.address, name=member.name, status=member.status,
                   role=member.role, created_at=member.created_at,
                   bounce_score=member.bounce_score, last_bounce_at=member.last_bounce_at)


class MemberChange(BaseModel):
    """What to change of one member; what is left out stays."""

    role: MemberRole | None = None
    name: str | None = Field(default=None, max_length=1000,
                             description="a new display name (an empty one changes nothing)")
    status: Literal["active"] | None = Field(
        default=None, description="active: enable a disabled or unsubscribed member, "
                                  "with a bounce score of 0 (as `mailflow member enable`)")


class MemberIn(BaseModel):
    address: str = Field(max_length=320, examples=["ann@example.net"])
    name: str = Field(default="", max_length=200)


class MembersIn(BaseModel):
    members: list[MemberIn] = Field(min_length=1, max_length=MAX_MEMBERS_PER_REQUEST)
    role: MemberRole | None = Field(default=None, description=(
        "the role of every member given (those already there take it too); "
        "left out: member for new ones, the others keep theirs"))


class Added(BaseModel):
    added: int
    existing: int = Field(description="already members (their status kept)")
    renamed: int = Field(description="of those, how many took the name given")


class RowError(BaseModel):
    row: int = Field(description="1-based among the file's non-empty rows (header: 1)")
    address: str
    error: str


class ImportReport(BaseModel):
    dry_run: bool
    valid: int
    added: int
    existing: int
    renamed: int
    errors: list[RowError]

    @classmethod
    def of(cls, result: MemberImport, dry_run: bool) -> ImportReport:
        return cls(dry_run=dry_run, valid=result.valid, added=result.added,
                   existing=result.existing, renamed=result.renamed,
                   errors=[RowError(row=p.line, address=p.address, error=p.error)
                           for p in result.problems])


@router.get("/lists/{address}/members")
async def list_members(address: ListAddress, deps: Deps, caller: Caller,
                       cursor: Cursor = None, limit: Limit = 50,
                       q: Annotated[str, Query(max_length=320,
                                               description="address or name contains")] = ""
                       ) -> Page[MemberOut]:
    """Members by address, a page at a time."""
    found = await deps.visible_list(caller, address)
    rows = await deps.read(deps.directory.members_page, found.address, limit + 1,
                           decode_cursor(cursor), q)
    items, more = trimmed(rows, limit, lambda m: m.address)
    return Page[MemberOut](items=[MemberOut.of(m) for m in items], next_cursor=more)


@router.post("/lists/{address}/members")
async def add_members(address: ListAddress, body: MembersIn, deps: Deps,
                      caller: Writer) -> Added:
    """Add members (all valid, or none added); one already there keeps its status and
    takes a non-empty name given for it."""
    found = await deps.visible_list(caller, address, change=True)
    result = await deps.write(deps.directory.import_members, found.address,
                              [(m.address, m.name) for m in body.members], role=body.role)
    await deps.changed(caller, "member.add", found.address,
                       ", ".join(m.address for m in body.members[:20])
                       + (f" role={body.role.value}" if body.role else ""))
    return Added(added=result.added, existing=result.existing, renamed=result.renamed)


@router.delete("/lists/{address}/members/{member}", status_code=204)
async def remove_member(address: ListAddress, member: MemberAddress, deps: Deps,
                        caller: Writer) -> Response:
    found = await deps.visible_list(caller, address, change=True)
    removed = await deps.write(deps.directory.remove_members, found.address, [member])
    if not removed:
        raise NotFound("member", member, f"{member} is not a member of {found.address}")
    await deps.changed(caller, "member.remove", found.address, member)
    return Response(status_code=204)


@router.post("/lists/{address}/members/import", openapi_extra={"requestBody": {
    "required": True,
    "content": {"text/csv": {"schema": {"type": "string"}}}}})
async def import_members(address: ListAddress, request: Request, deps: Deps, caller: Writer,
                         dry_run: bool = False) -> ImportReport:
    """Import a CSV file (the body, ``text/csv``): a header ``email[,name]`` or one
    address per row; valid rows are added, each invalid row is reported."""
    found = await deps.visible_list(caller, address, change=True)
    text = await _read_text(request, deps.body_timeout)
    rows = read_member_rows(io.StringIO(text, newline=""), "the file")
    result = await deps.write(deps.directory.import_member_rows, found.address, rows,
                              dry_run=dry_run)
    if not dry_run:
        await deps.changed(caller, "member.import", found.address,
                           f"added={result.added} existing={result.existing} "
                           f"invalid={len(result.problems)}")
    return ImportReport.of(result, dry_run)


async def _read_text(request: Request, seconds: float) -> str:
    """The CSV body as text: bounded in bytes, and in time (a client trickling a file in
    must not hold a connection for ever)."""
    try:
        async with asyncio.timeout(seconds):
            body = await read_limited(request, MAX_IMPORT_BYTES)
    except TimeoutError:
        raise InputTimeout(f"the file did not arrive within {seconds:g} s") from None
    if body is None:
        raise MessageTooLarge(f"a member file has at most {MAX_IMPORT_BYTES} bytes")
    try:
        return codecs.decode(body, "utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"the file is not UTF-8 text (byte {exc.object[exc.start]:#04x} "
                           f"at offset {exc.start}); save it as UTF-8 CSV") from None


@router.get("/lists/{address}/members/export", response_class=StreamingResponse,
            responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}},
                             "description": "email,name,status rows"}})
async def export_members(address: ListAddress, deps: Deps, caller: Caller
                         ) -> StreamingResponse:
    """The roster as CSV (``email,name,status``), which the import reads back."""
    found = await deps.visible_list(caller, address)

    async def rows() -> AsyncIterator[str]:
        yield "email,name,status\r\n"
        after = ""
        while True:
            batch = await deps.read(deps.directory.members_page, found.address,
                                    EXPORT_BATCH, after)
            out = io.StringIO()
            writer = csv.writer(out)
            writer.writerows([m.address, _cell(m.name), m.status.value] for m in batch)
            yield out.getvalue()
            if len(batch) < EXPORT_BATCH:
                return
            after = batch[-1].address

    filename = _UNSAFE_IN_FILENAME.sub("_", found.address.replace("@", "_at_"))
    return StreamingResponse(rows(), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="{filename}-members.csv"'})


def _cell(text: str) -> str:
    """A name as a spreadsheet may show it: one starting with = + - @ is not a formula."""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@") else text


# After /members/export and /members/import: a member's address never matches them.
@router.get("/lists/{address}/members/{member}")
async def get_member(address: ListAddress, member: MemberAddress, deps: Deps,
                     caller: Caller) -> MemberOut:
    """One member: its role, status, bounce score and last bounce."""
    found = await deps.visible_list(caller, address)
    return MemberOut.of(await deps.read(deps.directory.get_member, found.address, member))


@router.patch("/lists/{address}/members/{member}")
async def update_member(address: ListAddress, member: MemberAddress, body: MemberChange,
                        deps: Deps, caller: Writer) -> MemberOut:
    """Change a member's role or name, or enable it again (``status: active``)."""
    found = await deps.visible_list(caller, address, change=True)
    changed = await deps.write(deps.directory.update_member, found.address, member,
                               role=body.role, name=body.name,
                               enable=body.status == "active")
    given = body.model_dump(exclude_none=True, mode="json")
    await deps.changed(caller, "member.update", found.address, f"{changed.address} " + " ".join(
        f"{k}={v!r}" for k, v in sorted(given.items())))
    return MemberOut.of(changed)
