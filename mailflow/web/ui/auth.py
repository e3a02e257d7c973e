"""Logging in and out of the web UI.

Failed logins are counted per account and per client address in the same limiters as
the API's ``POST /api/v1/tokens``: either over its limit is refused before the password
is even checked, whichever door the guesses come through.
"""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import APIRouter, Query, Request, Response

from mailflow.errors import TooManyAttempts, Unauthenticated
from mailflow.services.access import PASSWORD_MAX_LENGTH
from mailflow.web.api.deps import check_not_blocked, client_of
from mailflow.web.ui.deps import (
    LOGIN_COOKIE,
    PREFIX,
    SESSION_COOKIE,
    Flash,
    Options,
    UiCaller,
    UiDeps,
    UiForm,
    csrf_token,
    new_login_secret,
    redirect,
    render,
    set_cookie,
    text_field,
)

router = APIRouter()
LOGIN_FORM_LIFETIME: Final = 3600  # seconds a login page's form stays valid


def _next_page(value: str) -> str:
    """Where to go after the login: a UI path only (no open redirect)."""
    if value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value \
            and len(value) <= 1000:
        return value
    return PREFIX + "/"


def _login_page(request: Request, next_page: str, secret: str, *, status: int = 200,
                email: str = "", error: str = "") -> Response:
    response = render(request, "login.html", None, {
        "login_csrf": csrf_token(secret), "next": next_page, "email": email,
        "login_error": error}, status=status)
    set_cookie(request, response, LOGIN_COOKIE, secret, max_age=LOGIN_FORM_LIFETIME)
    return response


@router.get("/login")
async def login_form(request: Request,
                     next: Annotated[str, Query(max_length=1000)] = PREFIX + "/"
                     ) -> Response:
    return _login_page(request, _next_page(next), new_login_secret())


@router.post("/login")
async def login(request: Request, form: UiForm, deps: UiDeps, options: Options) -> Response:
    email = text_field(form, "email", 320).strip().lower()
    password = text_field(form, "password", PASSWORD_MAX_LENGTH)
    next_page = _next_page(text_field(form, "next", 1000))
    client = client_of(request)
    secret = request.cookies.get(LOGIN_COOKIE) or new_login_secret()
    try:
        check_not_blocked(deps.clients, client, "logins from this address")
        check_not_blocked(deps.accounts, email, "logins for this account")
        try:
            user = await deps.read(deps.access.check_password, email, password)
        except Unauthenticated:
            deps.clients.failed(client)
            deps.accounts.failed(email)
            raise
    except TooManyAttempts as exc:
        response = _login_page(request, next_page, secret, status=429, email=email,
                               error=str(exc))
        response.headers["Retry-After"] = str(int(exc.retry_after) + 1)
        return response
    except Unauthenticated as exc:
        return _login_page(request, next_page, secret, status=401, email=email,
                           error=str(exc))
    # A session the browser had before is ended, not carried over (no fixation).
    await deps.write(deps.access.close_session, request.cookies.get(SESSION_COOKIE, ""))
    session = await deps.write(deps.access.open_session, user, options.session_lifetime)
    await deps.write(deps.access.record, user.email, "session.login", user.email,
                     f"from {client}")
    response = redirect(request, next_page)
    set_cookie(request, response, SESSION_COOKIE, session,
               max_age=int(options.session_lifetime))
    response.delete_cookie(LOGIN_COOKIE, path=PREFIX)
    return response


@router.post("/logout")
async def logout(request: Request, caller: UiCaller, deps: UiDeps) -> Response:
    await deps.write(deps.access.close_session, request.cookies.get(SESSION_COOKIE, ""))
    await deps.write(deps.access.record, caller.actor, "session.logout", caller.actor)
    response = redirect(request, PREFIX + "/login", Flash("ok", "You are logged out."))
    response.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return response
