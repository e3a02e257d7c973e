"""``/tokens``: logging in (a password for a token) and the caller's tokens.

``POST /tokens`` is the login: an address and password give a new token, shown once.
Failed logins are counted per account and per client address; either one over its
limit is refused (429) before the password is checked, so a password cannot be
guessed at line speed from many addresses or for many accounts.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, Field

from mailflow.errors import Unauthenticated
from mailflow.model import ApiToken, TokenScope
from mailflow.services.access import PASSWORD_MAX_LENGTH
from mailflow.web.api.deps import Caller, Deps, Writer, check_not_blocked, client_of

router = APIRouter(tags=["access"])


class Login(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=PASSWORD_MAX_LENGTH)
    scope: TokenScope = TokenScope.WRITE
    label: str = Field(default="", max_length=200)


class TokenOut(BaseModel):
    id: int
    user: str | None = Field(description="null: a site token")
    scope: TokenScope
    label: str
    created_at: float

    @classmethod
    def of(cls, token: ApiToken) -> TokenOut:
        return cls(id=token.id, user=token.user_email, scope=token.scope, label=token.label,
                   created_at=token.created_at)


class NewToken(TokenOut):
    token: str = Field(description="the secret: shown this once, stored only hashed")


@router.post("/tokens", status_code=201, openapi_extra={"security": []})
async def login(body: Login, request: Request, deps: Deps) -> NewToken:
    """Log in: a new token for a user's address and password."""
    client, account = client_of(request), body.email.strip().lower()
    check_not_blocked(deps.clients, client, "logins from this address")
    check_not_blocked(deps.accounts, account, "logins for this account")
    try:
        user = await deps.read(deps.access.check_password, account, body.password)
    except Unauthenticated:
        deps.clients.failed(client)
        deps.accounts.failed(account)
        raise
    token, secret = await deps.write(deps.access.create_token, user.email, body.scope,
                                     body.label)
    await deps.write(deps.access.record, user.email, "token.create", user.email,
                     f"id={token.id} scope={token.scope.value} (login)")
    return NewToken(token=secret, **TokenOut.of(token).model_dump())


@router.get("/tokens")
async def list_tokens(deps: Deps, caller: Caller) -> list[TokenOut]:
    """The caller's tokens (a site admin's: every token)."""
    mine = None if caller.user is None or caller.is_admin else caller.user.email
    return [TokenOut.of(t) for t in await deps.read(deps.access.tokens, mine)]


@router.delete("/tokens/{token_id}", status_code=204)
async def revoke_token(token_id: Annotated[int, Path(ge=1, le=2**31 - 1)], deps: Deps,
                       caller: Writer) -> Response:
    """Revoke a token of the caller's (a site admin: any token)."""
    mine = None if caller.user is None or caller.is_admin else caller.user.email
    await deps.write(deps.access.revoke_token, token_id, mine)
    await deps.changed(caller, "token.revoke", str(token_id))
    return Response(status_code=204)
