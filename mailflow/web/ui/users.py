"""The users page (site admins): the accounts that may log in, adding and removing them,
and their roles on lists; the same service calls as the API's ``/users``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from mailflow.errors import Conflict, InvalidInput, NotFound
from mailflow.services.access import validated_password
from mailflow.services.directory import validated_address
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


async def _page(request: Request, caller: UiAdmin, deps: UiDeps, *, email: str = "",
                admin: bool = False, errors: FieldErrors | None = None,
                status: int = 200) -> Response:
    users = await deps.read(deps.access.users)
    return render(request, "users.html", caller, {
        "title": "Users", "users": users, "email": email, "admin": admin,
        "errors": errors or FieldErrors()}, status=status)


@router.get("/users")
async def users_page(request: Request, caller: UiAdmin, deps: UiDeps) -> Response:
    return await _page(request, caller, deps)


@router.post("/users")
async def add_user(request: Request, caller: UiAdmin, deps: UiDeps, form: UiForm
                   ) -> Response:
    email = text_field(form, "email", 1000).strip()
    password = text_field(form, "password", 2000)
    admin = text_field(form, "admin", 10) == "on"
    # Checked here first only to put each error next to its field; add_user checks again.
    errors = FieldErrors()
    try:
        validated_address(email)
    except InvalidInput as exc:
        errors.add("email", exc)
    try:
        validated_password(password)
    except InvalidInput as exc:
        errors.add("password", exc)
    if password != text_field(form, "password2", 2000):
        errors.add("password2", "the two passwords differ")
    if not errors:
        try:
            user = await deps.write(deps.access.add_user, email, password, admin=admin)
        except (InvalidInput, Conflict) as exc:
            errors.add("email", exc)
    if errors:
        return await _page(request, caller, deps, email=email, admin=admin, errors=errors,
                           status=422)
    await deps.changed(caller.principal, "user.add", user.email,
                       "admin" if user.is_admin else "")
    return redirect(request, ui_path("users"), Flash("ok", f"Added {user.email}."))


@router.post("/users/{email}/remove")
async def remove_user(email: str, request: Request, caller: UiAdmin, deps: UiDeps
                      ) -> Response:
    try:
        await deps.write(deps.access.remove_user, email)
    except (InvalidInput, NotFound) as exc:
        return redirect(request, ui_path("users"), Flash("error", str(exc)))
    await deps.changed(caller.principal, "user.remove", email)
    return redirect(request, ui_path("users"), Flash("ok", f"Removed {email}."))


@router.post("/users/{email}/role")
async def set_role(email: str, request: Request, caller: UiAdmin, deps: UiDeps,
                   form: UiForm) -> Response:
    """Make a user owner or moderator of a list, or (role ``none``) take the role."""
    address = text_field(form, "list", 1000).strip()
    role = text_field(form, "role", 20)
    try:
        await deps.write(deps.access.set_list_role, email, address,
                         None if role == "none" else role)
    except (InvalidInput, NotFound, Conflict) as exc:
        return redirect(request, ui_path("users"), Flash("error", str(exc)))
    action = "role.remove" if role == "none" else f"role.{role}"
    await deps.changed(caller.principal, action, address, email)
    text = (f"{email} has no role on {address} now." if role == "none"
            else f"{email} is {role} of {address}.")
    return redirect(request, ui_path("users"), Flash("ok", text))
