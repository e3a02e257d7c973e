"""The domains page: the domains the relay serves; site admins add and remove them."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from mailflow.errors import Conflict, InvalidInput, NotFound
from mailflow.web.ui.deps import (
    FieldErrors,
    Flash,
    UiAdmin,
    UiDeps,
    UiForm,
    redirect,
    render,
    text_field,
    ui_path,
)

router = APIRouter()


async def _page(request: Request, caller: UiAdmin, deps: UiDeps, *, name: str = "",
                errors: FieldErrors | None = None, status: int = 200) -> Response:
    domains = await deps.read(deps.directory.domains)
    lists = await deps.read(deps.directory.lists)
    per_domain: dict[str, int] = {}
    for found, _ in lists:
        domain = found.address.rpartition("@")[2]
        per_domain[domain] = per_domain.get(domain, 0) + 1
    return render(request, "domains.html", caller, {
        "title": "Domains", "domains": [(d, per_domain.get(d.name, 0)) for d in domains],
        "name": name, "errors": errors or FieldErrors()}, status=status)


@router.get("/domains")
async def domains_page(request: Request, caller: UiAdmin, deps: UiDeps) -> Response:
    return await _page(request, caller, deps)


@router.post("/domains")
async def add_domain(request: Request, caller: UiAdmin, deps: UiDeps, form: UiForm
                     ) -> Response:
    name = text_field(form, "name", 1000).strip()
    try:
        domain = await deps.write(deps.directory.add_domain, name)
    except (InvalidInput, Conflict) as exc:
        errors = FieldErrors()
        errors.add("name", exc)
        return await _page(request, caller, deps, name=name, errors=errors, status=422)
    await deps.changed(caller.principal, "domain.add", domain.name)
    return redirect(request, ui_path("domains"), Flash("ok", f"Added {domain.name}."))


@router.post("/domains/{name}/remove")
async def remove_domain(name: str, request: Request, caller: UiAdmin, deps: UiDeps
                        ) -> Response:
    try:
        await deps.write(deps.directory.remove_domain, name)
    except (Conflict, NotFound, InvalidInput) as exc:
        return redirect(request, ui_path("domains"), Flash("error", str(exc)))
    await deps.changed(caller.principal, "domain.remove", name)
    return redirect(request, ui_path("domains"), Flash("ok", f"Removed {name}."))
