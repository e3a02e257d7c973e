"""The DKIM keys page (site admins): each domain's key with the DNS TXT record to
publish, a new key for a domain, and removing one after a confirmation; through the
directory service, as ``mailflow dkim keygen|ls|remove`` and ``/api/v1/dkim-keys``.

A private key is never shown: the page gets only the selector, the DNS name and the
record.  Every change goes to the audit log under the API's action names.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request, Response

from mailflow.errors import Conflict, InvalidInput, NotFound
from mailflow.model import DkimKey
from mailflow.web.ui.deps import (
    FieldErrors,
    Flash,
    UiAdmin,
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


@dataclass(frozen=True, slots=True)
class KeyView:
    """What the page may show of a key (never its private part)."""

    domain: str
    selector: str
    created_at: float
    dns_name: str
    dns_txt: str

    @classmethod
    def of(cls, key: DkimKey) -> KeyView:
        return cls(key.domain, key.selector, key.created_at, key.dns_name, key.dns_text)


async def _page(request: Request, caller: UiSession, deps: UiDeps, *,
                values: Values | None = None, errors: FieldErrors | None = None,
                status: int = 200) -> Response:
    keys = [KeyView.of(k) for k in await deps.read(deps.directory.dkim_keys)]
    return render(request, "dkim.html", caller, {
        "title": "DKIM keys", "keys": keys, "values": values or Values(),
        "errors": errors or FieldErrors()}, status=status)


@router.get("/dkim")
async def dkim_page(request: Request, caller: UiAdmin, deps: UiDeps) -> Response:
    return await _page(request, caller, deps)


@router.post("/dkim")
async def create_key(request: Request, caller: UiAdmin, deps: UiDeps,
                     form: UiForm) -> Response:
    """A new 2048-bit RSA key for a served domain (``replace``: instead of its key)."""
    caller.principal.require_write()
    given = {"domain": text_field(form, "domain", FIELD_CUT),
             "selector": text_field(form, "selector", FIELD_CUT),
             "replace": "on" if "on" in form.getlist("replace") else ""}
    try:
        key = await deps.write(deps.directory.create_dkim_key, given["domain"],
                               given["selector"].strip() or None,
                               replace=bool(given["replace"]))
    except (InvalidInput, NotFound, Conflict) as exc:
        errors = FieldErrors()
        wrong_selector = isinstance(exc, InvalidInput) and "selector" in str(exc)
        errors.add("selector" if wrong_selector else "domain", str(exc))
        return await _page(request, caller, deps, values=Values(given), errors=errors,
                           status=422 if isinstance(exc, InvalidInput) else
                           409 if isinstance(exc, Conflict) else 404)
    await deps.changed(caller.principal, "dkim.create", key.domain,
                       f"selector={key.selector}" + (" replace" if given["replace"] else ""))
    return redirect(request, ui_path("dkim"), Flash(
        "ok", f"Made a key for {key.domain}: publish its TXT record at {key.dns_name}."))


@router.post("/dkim/remove")
async def remove_key(request: Request, caller: UiAdmin, deps: UiDeps,
                     form: UiForm) -> Response:
    """Asks first; with ``confirm=yes``, stops signing the domain's copies and forgets
    its key."""
    caller.principal.require_write()
    domain = text_field(form, "domain", FIELD_CUT)
    if text_field(form, "confirm", 10) != "yes":
        found = next((k for k in await deps.read(deps.directory.dkim_keys)
                      if k.domain == domain.strip().lower()), None)
        if found is None:
            return redirect(request, ui_path("dkim"),
                            Flash("error", f"{domain[:253]} has no DKIM key."))
        return render(request, "dkim_confirm.html", caller, {
            "title": "Remove a DKIM key", "key": KeyView.of(found)})
    try:
        key = await deps.write(deps.directory.remove_dkim_key, domain)
    except (InvalidInput, NotFound) as exc:
        return redirect(request, ui_path("dkim"), Flash("error", str(exc)))
    await deps.changed(caller.principal, "dkim.remove", key.domain,
                       f"selector={key.selector}")
    return redirect(request, ui_path("dkim"), Flash(
        "ok", f"{key.domain}'s copies are no longer signed; remove its TXT record at "
              f"{key.dns_name}."))
