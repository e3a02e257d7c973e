"""A list's members: search, a page at a time, add, remove, role; CSV import and export.

The import has two steps: the file is checked first (the directory's dry run: every
invalid row with its line and why), and only the second step, with the same text,
adds the valid rows.  The text travels in the preview's form, so nothing is kept on
the server between the steps; larger files go through the API or ``mailflow member
import``.
"""

from __future__ import annotations

import codecs
import io
from collections.abc import Callable
from typing import Final

from fastapi import APIRouter, Query, Request, Response
from starlette.datastructures import FormData, UploadFile

from mailflow.errors import InvalidInput, NotFound
from mailflow.model import MailingList, MemberRole
from mailflow.services.member_csv import MemberImport, MemberRow, read_member_rows
from mailflow.web.api.members import export_members
from mailflow.web.ui.deps import (
    FieldErrors,
    Flash,
    UiCaller,
    UiDeps,
    UiForm,
    UiSession,
    redirect,
    render,
    text_field,
    ui_path,
)
from mailflow.web.ui.lists import may_change

router = APIRouter()
PAGE_SIZE: Final = 50
MAX_IMPORT_TEXT: Final = 1024 * 1024  # bytes of CSV the UI takes in one import
PREVIEW_ROWS: Final = 20
ROLES: Final = tuple((r.value, r.value) for r in MemberRole)


async def _changeable(deps: UiDeps, caller: UiSession, address: str) -> MailingList:
    found = await deps.visible_list(caller.principal, address)
    caller.principal.require_list(found.address, change=True)
    return found


async def _members_page(request: Request, caller: UiSession, deps: UiDeps,
                        found: MailingList, q: str = "", after: str = "", *,
                        values: dict[str, str] | None = None,
                        errors: FieldErrors | None = None, status: int = 200) -> Response:
    rows = await deps.read(deps.directory.members_page, found.address, PAGE_SIZE + 1,
                           after, q)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    return render(request, "members.html", caller, {
        "title": f"Members of {found.address}", "list": found, "members": rows, "q": q,
        "after": after, "next_after": rows[-1].address if more and rows else "",
        "can_change": may_change(caller, found.address), "roles": ROLES,
        "bounce_threshold": found.bounce_threshold,
        "values": values or {"role": "member"}, "errors": errors or FieldErrors()},
        status=status)


@router.get("/lists/{address}/members")
async def members_page(address: str, request: Request, caller: UiCaller, deps: UiDeps,
                       q: str = Query("", max_length=320),
                       after: str = Query("", max_length=320)) -> Response:
    found = await deps.visible_list(caller.principal, address)
    return await _members_page(request, caller, deps, found, q, after)


@router.post("/lists/{address}/members")
async def add_member(address: str, request: Request, caller: UiCaller, deps: UiDeps,
                     form: UiForm) -> Response:
    found = await _changeable(deps, caller, address)
    values = {"address": text_field(form, "address", 1000).strip(),
              "name": text_field(form, "name", 1000).strip(),
              "role": text_field(form, "role", 100) or "member"}
    try:
        added = await deps.write(deps.directory.add_members, found.address,
                                 [values["address"]], name=values["name"],
                                 role=values["role"])
    except InvalidInput as exc:
        errors = FieldErrors()
        text = str(exc)
        errors.add("role" if "role" in text else "name" if "name" in text else "address",
                   text)
        return await _members_page(request, caller, deps, found, values=values,
                                   errors=errors, status=422)
    await deps.changed(caller.principal, "member.add", found.address,
                       f"{values['address']} role={values['role']}")
    text = (f"Added {values['address']}." if added.added
            else f"{values['address']} was a member already; name and role updated.")
    return redirect(request, ui_path("lists", found.address, "members"), Flash("ok", text))


async def _change_member(request: Request, caller: UiCaller, deps: UiDeps, address: str,
                         member: str, change: Callable[[str], int],
                         audit: tuple[str, str], done: Flash, none: Flash) -> Response:
    """One roster change from a member's row, as the CLI makes it: the directory's words
    for a refusal, ``none`` when it changed nobody, else the audit entry and ``done``."""
    target = ui_path("lists", address, "members")
    try:
        changed = await deps.write(change, member)
    except InvalidInput as exc:
        return redirect(request, target, Flash("error", str(exc)))
    if not changed:
        return redirect(request, target, none)
    await deps.changed(caller.principal, audit[0], address, audit[1])
    return redirect(request, target, done)


@router.post("/lists/{address}/members/remove")
async def remove_member(address: str, request: Request, caller: UiCaller, deps: UiDeps,
                        form: UiForm) -> Response:
    found = await _changeable(deps, caller, address)
    member = text_field(form, "member", 1000)
    return await _change_member(
        request, caller, deps, found.address, member,
        lambda m: deps.directory.remove_members(found.address, [m]),
        ("member.remove", member), Flash("ok", f"Removed {member}."),
        Flash("error", f"{member} is not a member."))


@router.post("/lists/{address}/members/role")
async def set_role(address: str, request: Request, caller: UiCaller, deps: UiDeps,
                   form: UiForm) -> Response:
    found = await _changeable(deps, caller, address)
    member, role = text_field(form, "member", 1000), text_field(form, "role", 100)
    return await _change_member(
        request, caller, deps, found.address, member,
        lambda m: deps.directory.set_role(found.address, [m], role),
        ("member.role", f"{member} {role}"), Flash("ok", f"{member} is now {role}."),
        Flash("error", f"{member} is not a member."))


@router.post("/lists/{address}/members/enable")
async def enable_member(address: str, request: Request, caller: UiCaller, deps: UiDeps,
                        form: UiForm) -> Response:
    """A disabled (bouncing) or unsubscribed member active again, with a clean bounce
    record, as ``mailflow member enable``."""
    found = await _changeable(deps, caller, address)
    member = text_field(form, "member", 1000)
    return await _change_member(
        request, caller, deps, found.address, member,
        lambda m: deps.directory.enable_members(found.address, [m]),
        ("member.enable", member), Flash("ok", f"{member} is active again."),
        Flash("warn", f"{member} was active already."))


@router.get("/lists/{address}/members/export")
async def export(address: str, caller: UiCaller, deps: UiDeps) -> Response:
    """The roster as CSV, as the API's export (which the import reads back)."""
    return await export_members(address, deps, caller.principal)


# -- CSV import ---------------------------------------------------------------------------

@router.get("/lists/{address}/members/import")
async def import_form(address: str, request: Request, caller: UiCaller, deps: UiDeps
                      ) -> Response:
    found = await _changeable(deps, caller, address)
    return render(request, "import.html", caller, {
        "title": f"Import members into {found.address}", "list": found, "text": "",
        "limit_kib": MAX_IMPORT_TEXT // 1024})


async def _import_text(form: FormData) -> str:
    upload = form.get("file")
    if isinstance(upload, UploadFile) and upload.filename:
        data = await upload.read(MAX_IMPORT_TEXT + 1)
    else:
        data = text_field(form, "text", MAX_IMPORT_TEXT + 1).encode()
    if not data.strip():
        raise InvalidInput("choose a CSV file or paste its rows")
    if len(data) > MAX_IMPORT_TEXT:
        raise InvalidInput(f"the web page takes at most {MAX_IMPORT_TEXT // 1024} KiB of "
                           "CSV; import a larger file with the API or `mailflow member "
                           "import`")
    try:
        return codecs.decode(data, "utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"the file is not UTF-8 text (byte {exc.object[exc.start]:#04x} "
                           f"at offset {exc.start}); save it as UTF-8 CSV") from None


def _rows(text: str) -> list[MemberRow]:
    return read_member_rows(io.StringIO(text, newline=""), "the file")


@router.post("/lists/{address}/members/import/preview")
async def preview(address: str, request: Request, caller: UiCaller, deps: UiDeps,
                  form: UiForm) -> Response:
    """Step one: what the import would do, every invalid row with its line and why."""
    found = await _changeable(deps, caller, address)
    text = ""
    try:
        text = await _import_text(form)
        rows = _rows(text)
        result: MemberImport = await deps.write(deps.directory.import_member_rows,
                                                found.address, rows, dry_run=True)
    except InvalidInput as exc:
        errors = FieldErrors()
        errors.add("text", exc)
        return render(request, "import.html", caller, {
            "title": f"Import members into {found.address}", "list": found,
            "text": text if len(text) < 64 * 1024 else "", "errors": errors,
            "limit_kib": MAX_IMPORT_TEXT // 1024}, status=422)
    bad = {p.line for p in result.problems}
    return render(request, "import_preview.html", caller, {
        "title": f"Check the import into {found.address}", "list": found,
        "result": result, "text": text, "total": len(rows),
        "sample": [r for r in rows if r.line not in bad][:PREVIEW_ROWS]})


@router.post("/lists/{address}/members/import")
async def import_members(address: str, request: Request, caller: UiCaller, deps: UiDeps,
                         form: UiForm) -> Response:
    """Step two: add the valid rows of the text the preview showed."""
    found = await _changeable(deps, caller, address)
    target = ui_path("lists", found.address, "members")
    try:
        rows = _rows(await _import_text(form))
        result = await deps.write(deps.directory.import_member_rows, found.address, rows)
    except (InvalidInput, NotFound) as exc:
        return redirect(request, ui_path("lists", found.address, "members", "import"),
                        Flash("error", str(exc)))
    await deps.changed(caller.principal, "member.import", found.address,
                       f"added={result.added} existing={result.existing} "
                       f"invalid={len(result.problems)}")
    skipped = f"; {len(result.problems)} invalid rows skipped" if result.problems else ""
    return redirect(request, target, Flash(
        "ok", f"Imported: {result.added} added, {result.existing} already members"
        f"{skipped}."))
