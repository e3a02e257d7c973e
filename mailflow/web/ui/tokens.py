"""The API tokens page: a user's own tokens (a site admin's: every token), creating one
(its secret shown on the answer to the form, once: only its digest is stored) and
revoking one; the same service calls as the API's ``/tokens``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from mailflow.errors import Forbidden, InvalidInput, NotFound
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

router = APIRouter()


def _owner(caller: UiSession) -> str | None:
    """Whose tokens the caller sees and may revoke (``None``: every one)."""
    user = caller.principal.user
    return None if user is None or caller.principal.is_admin else user.email


async def _page(request: Request, caller: UiCaller, deps: UiDeps, *, label: str = "",
                scope: str = "write", errors: FieldErrors | None = None,
                status: int = 200) -> Response:
    tokens = await deps.read(deps.access.tokens, _owner(caller))
    return render(request, "tokens.html", caller, {
        "title": "API tokens", "tokens": tokens, "label": label, "scope": scope,
        "errors": errors or FieldErrors()}, status=status)


@router.get("/tokens")
async def tokens_page(request: Request, caller: UiCaller, deps: UiDeps) -> Response:
    return await _page(request, caller, deps)


@router.post("/tokens")
async def create_token(request: Request, caller: UiCaller, deps: UiDeps, form: UiForm
                       ) -> Response:
    """A new token of the caller's; the answer is the only page that shows its secret
    (not a redirect: the secret must not go through a cookie or a URL)."""
    user = caller.principal.user
    if user is None:
        raise Forbidden("only a user may create a token here")
    label = text_field(form, "label", 1000).strip()
    scope = text_field(form, "scope", 20)
    try:
        token, secret = await deps.write(deps.access.create_token, user.email, scope, label)
    except InvalidInput as exc:
        errors = FieldErrors()
        errors.add("scope" if "scope" in str(exc) else "label", exc)
        return await _page(request, caller, deps, label=label, scope=scope, errors=errors,
                           status=422)
    await deps.changed(caller.principal, "token.create", user.email,
                       f"id={token.id} scope={token.scope.value}")
    return render(request, "token_created.html", caller, {
        "title": "New API token", "token": token, "secret": secret})


@router.post("/tokens/{token_id}/revoke")
async def revoke_token(token_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
                       request: Request, caller: UiCaller, deps: UiDeps) -> Response:
    try:
        await deps.write(deps.access.revoke_token, token_id, _owner(caller))
    except NotFound as exc:
        return redirect(request, ui_path("tokens"), Flash("error", str(exc)))
    await deps.changed(caller.principal, "token.revoke", str(token_id))
    return redirect(request, ui_path("tokens"), Flash("ok", f"Revoked token {token_id}."))
