"""``/users`` (site admins) and ``/me``: accounts and their roles on lists."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field

from mailflow.model import ListRole, User
from mailflow.services.access import PASSWORD_MAX_LENGTH
from mailflow.web.api.deps import Admin, AdminWriter, Caller, Deps
from mailflow.web.api.lists import ListAddress

router = APIRouter(tags=["access"])
Email = Annotated[str, Path(max_length=320, json_schema_extra={"format": "email"})]


class UserOut(BaseModel):
    email: str
    is_admin: bool
    created_at: float

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(email=user.email, is_admin=user.is_admin, created_at=user.created_at)


class UserIn(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=PASSWORD_MAX_LENGTH)
    admin: bool = False


class RoleIn(BaseModel):
    role: ListRole


class Me(BaseModel):
    actor: str
    is_admin: bool
    scope: str
    lists: dict[str, ListRole] = Field(description="the lists the caller has a role on")


@router.get("/me")
async def me(caller: Caller) -> Me:
    """Who the token belongs to and what it may do."""
    return Me(actor=caller.actor, is_admin=caller.is_admin, scope=caller.scope.value,
              lists=caller.roles)


@router.get("/users")
async def list_users(deps: Deps, caller: Admin) -> list[UserOut]:
    return [UserOut.of(u) for u in await deps.read(deps.access.users)]


@router.post("/users", status_code=201)
async def add_user(body: UserIn, deps: Deps, caller: AdminWriter) -> UserOut:
    user = await deps.write(deps.access.add_user, body.email, body.password, admin=body.admin)
    await deps.changed(caller, "user.add", user.email, "admin" if user.is_admin else "")
    return UserOut.of(user)


@router.delete("/users/{email}", status_code=204)
async def remove_user(email: Email, deps: Deps, caller: AdminWriter) -> Response:
    """Remove a user with their tokens and roles."""
    await deps.write(deps.access.remove_user, email)
    await deps.changed(caller, "user.remove", email)
    return Response(status_code=204)


@router.put("/users/{email}/lists/{address}", status_code=204)
async def set_role(email: Email, address: ListAddress, body: RoleIn, deps: Deps,
                   caller: AdminWriter) -> Response:
    """Make a user owner or moderator of a list."""
    await deps.write(deps.access.set_list_role, email, address, body.role)
    await deps.changed(caller, f"role.{body.role.value}", address, email)
    return Response(status_code=204)


@router.delete("/users/{email}/lists/{address}", status_code=204)
async def clear_role(email: Email, address: ListAddress, deps: Deps,
                     caller: AdminWriter) -> Response:
    await deps.write(deps.access.set_list_role, email, address, None)
    await deps.changed(caller, "role.remove", address, email)
    return Response(status_code=204)
