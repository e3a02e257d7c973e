"""The suppressions page: the addresses no list sends to (every list, or one), as
``mailflow suppress add|ls|remove`` and ``/api/v1/suppressions``, through the same
directory service.

A site admin sees every entry and changes the global ones; an owner or moderator sees
their lists' entries and an owner changes them.  Every change goes to the audit log
under the API's action names (``suppression.add``, ``suppression.remove``).
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response

from mailflow.errors import InvalidInput, NotFound
from mailflow.model import ListRole, TokenScope
from mailflow.web.ui import ops_format  # noqa: F401  (the templates' time filters)
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
from mailflow.web.ui.rules import FIELD_CUT, Values

router = APIRouter()
PAGE_SIZE: Final = 100


def _back(list_address: str | None) -> str:
    path = ui_path("suppressions")
    return path + "?list=" + quote(list_address, safe="@") if list_address else path


async def _page(request: Request, caller: UiSession, deps: UiDeps, chosen: str, after: str,
                *, values: Values | None = None, errors: FieldErrors | None = None,
                status: int = 200) -> Response:
    principal = caller.principal
    lists = [m.address for m, _ in await deps.read(deps.directory.lists)
             if principal.may_read_list(m.address)]
    if not chosen and not principal.is_admin:
        if not lists:
            return render(request, "suppressions.html", caller, {
                "title": "Suppressions", "lists": [], "entries": [], "chosen": "",
                "owned": [], "values": Values(), "errors": FieldErrors()})
        chosen = lists[0]
    target = await deps.list_scope(caller.principal, chosen)
    address, _, entry_target = after.partition("\t")
    rows = await deps.read(deps.directory.suppressions_page, target, PAGE_SIZE + 1,
                           (address, entry_target) if after else None)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    writer = principal.scope is TokenScope.WRITE
    owned = [a for a in lists if writer and (
        principal.is_admin or principal.roles.get(a) is ListRole.OWNER)]
    return render(request, "suppressions.html", caller, {
        "title": "Suppressions", "lists": lists, "entries": rows, "chosen": chosen,
        "owned": owned, "may_global": writer and principal.is_admin,
        "next_after": f"{rows[-1].address}\t{rows[-1].target}" if more and rows else None,
        "values": values or Values({"list": chosen}), "errors": errors or FieldErrors()},
        status=status)


@router.get("/suppressions")
async def suppressions_page(request: Request, caller: UiCaller, deps: UiDeps,
                            list_address: str = Query("", alias="list", max_length=320),
                            after: str = Query("", max_length=700)) -> Response:
    """Every entry (a site admin, without ``list``) or one list's, by address."""
    return await _page(request, caller, deps, list_address.strip(), after)


@router.post("/suppressions")
async def add_suppression(request: Request, caller: UiCaller, deps: UiDeps,
                          form: UiForm) -> Response:
    given = {"address": text_field(form, "address", FIELD_CUT),
             "list": text_field(form, "list", FIELD_CUT),
             "reason": text_field(form, "reason", FIELD_CUT)}
    target = await deps.list_scope(caller.principal, given["list"], change=True)
    try:
        added = await deps.write(deps.directory.suppress, given["address"], target,
                                 given["reason"])
    except InvalidInput as exc:
        errors = FieldErrors()
        errors.add("reason" if "reason" in str(exc) else "address", str(exc))
        return await _page(request, caller, deps, given["list"].strip(), "",
                           values=Values(given), errors=errors, status=422)
    address = given["address"].strip().lower()
    await deps.changed(caller.principal, "suppression.add", target or "*", address)
    text = (f"Suppressed {address}" if added else f"{address} was suppressed already") + (
        f" for {target}." if target else " for every list.")
    return redirect(request, _back(target), Flash("ok" if added else "warn", text))


@router.post("/suppressions/remove")
async def remove_suppression(request: Request, caller: UiCaller, deps: UiDeps,
                             form: UiForm) -> Response:
    address = text_field(form, "address", FIELD_CUT)
    target = await deps.list_scope(caller.principal, text_field(form, "list", FIELD_CUT),
                                   change=True)
    try:
        await deps.write(deps.directory.unsuppress, address, target)
    except (InvalidInput, NotFound) as exc:
        return redirect(request, _back(target), Flash("error", str(exc)))
    await deps.changed(caller.principal, "suppression.remove", target or "*", address)
    return redirect(request, _back(target), Flash("ok", f"{address} gets mail again" + (
        f" from {target}." if target else ".")))
