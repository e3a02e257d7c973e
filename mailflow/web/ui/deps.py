"""What every web UI page gets: the logged-in caller, its form (CSRF-checked), and the
way to answer with a template, a redirect or a flash message.

A session is a random secret in the ``mf_session`` cookie (HttpOnly, SameSite=Lax,
Secure when the request came over HTTPS, directly or through a proxy named in
``forwarded_allow_ips``), stored only as a digest (:meth:`AccessService.open_session`).
Its CSRF token is derived from that secret, so it needs no storage and dies with the
session; every request other than GET and HEAD must carry it, in the form field
``csrf_token`` or (htmx, via ``static/ui.js``) the header ``X-CSRF-Token``.  The login
form, before there is a session, is guarded the same way by a random ``mf_login``
cookie (double submit), so nobody can log a browser into another account.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData
from starlette.requests import ClientDisconnect

from mailflow.errors import Forbidden, InputTimeout, MailflowError, MessageTooLarge, Unauthenticated
from mailflow.http_body import read_limited
from mailflow.services.access import Principal
from mailflow.web.api.deps import ApiDeps, get_deps
from mailflow.web.ui.nav import nav_for

PREFIX: Final = "/ui"
SESSION_COOKIE: Final = "mf_session"
LOGIN_COOKIE: Final = "mf_login"
FLASH_COOKIE: Final = "mf_flash"
CSRF_FIELD: Final = "csrf_token"
CSRF_HEADER: Final = "x-csrf-token"
LOGIN_PATH: Final = PREFIX + "/login"
MAX_FORM_BYTES: Final = 4 * 1024 * 1024  # a form's body: the member import's text is 1 MiB
MAX_FORM_FIELDS: Final = 1000
MAX_FLASH_CHARS: Final = 500
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})

TEMPLATES: Final = Jinja2Templates(directory=Path(__file__).with_name("templates"))


def _utc(moment: float | None) -> str:
    """Epoch seconds as the pages show them: ``2026-12-01 05:10 UTC``."""
    if moment is None:
        return ""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M UTC")


TEMPLATES.env.filters["utc"] = _utc


@dataclass(frozen=True, slots=True)
class UiOptions:
    """Settings of the web UI (``ui_session_lifetime``)."""

    session_lifetime: float = 12 * 3600.0


@dataclass(frozen=True, slots=True)
class UiSession:
    """The caller of one UI request: who (the same :class:`Principal` the API asks
    whether a list may be read or changed) and the CSRF token its forms carry."""

    principal: Principal
    csrf: str

    @property
    def actor(self) -> str:
        return self.principal.actor


class LoginRequired(Exception):
    """No valid session: the handler sends the browser to the login page."""


def csrf_token(secret: str) -> str:
    """The CSRF token of a session (or a login form) secret."""
    return hmac.new(secret.encode(), b"mailflow csrf", hashlib.sha256).hexdigest()


def is_secure(request: Request) -> bool:
    """HTTPS directly, or per ``X-Forwarded-Proto`` from a trusted proxy (uvicorn sets
    the scheme from it only for ``forwarded_allow_ips``)."""
    return request.url.scheme == "https"


def set_cookie(request: Request, response: Response, name: str, value: str,
               max_age: int | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, path=PREFIX, httponly=True,
                        samesite="lax", secure=is_secure(request))


def get_options(request: Request) -> UiOptions:
    options: UiOptions = request.app.state.ui
    return options


def _expected_csrf(request: Request) -> str | None:
    cookie = LOGIN_COOKIE if request.url.path == LOGIN_PATH else SESSION_COOKIE
    secret = request.cookies.get(cookie)
    return csrf_token(secret) if secret else None


async def _read_form(request: Request, seconds: float) -> FormData:
    """The form of a request, bounded in bytes, fields and time."""
    try:
        async with asyncio.timeout(seconds):
            body = await read_limited(request, MAX_FORM_BYTES)
    except (TimeoutError, ClientDisconnect):
        raise InputTimeout(f"the form did not arrive within {seconds:g} s") from None
    if body is None:
        raise MessageTooLarge(f"a form has at most {MAX_FORM_BYTES // 1024} KiB")
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return await Request(request.scope, replay).form(max_files=1,
                                                     max_fields=MAX_FORM_FIELDS,
                                                     max_part_size=MAX_FORM_BYTES)


async def checked_form(request: Request, deps: Annotated[ApiDeps, Depends(get_deps)]
                       ) -> FormData:
    """The request's form, after its CSRF token was checked (every method but GET and
    HEAD); a GET has an empty form.  Every UI router depends on it, so no page can
    forget the check; a page reads its fields from the same parsed form (``UiForm``)."""
    if request.method in SAFE_METHODS:
        return FormData()
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    form = (await _read_form(request, deps.body_timeout)
            if content_type in ("application/x-www-form-urlencoded", "multipart/form-data")
            else FormData())
    expected = _expected_csrf(request)
    given = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    if expected is None or not isinstance(given, str) or not hmac.compare_digest(
            given.encode(), expected.encode()):
        raise Forbidden("the form's CSRF token is missing or wrong: reload the page and "
                        "try again")
    return form


async def get_session(request: Request, deps: Annotated[ApiDeps, Depends(get_deps)]
                      ) -> UiSession:
    """The logged-in caller; without a valid session, the browser goes to the login."""
    secret = request.cookies.get(SESSION_COOKIE, "")
    if not secret:
        raise LoginRequired
    try:
        principal = await deps.read(deps.access.session_principal, secret)
    except Unauthenticated:
        raise LoginRequired from None
    return UiSession(principal, csrf_token(secret))


async def get_admin_session(session: Annotated[UiSession, Depends(get_session)]
                            ) -> UiSession:
    session.principal.require_admin()
    return session


UiDeps = Annotated[ApiDeps, Depends(get_deps)]
UiCaller = Annotated[UiSession, Depends(get_session)]
UiAdmin = Annotated[UiSession, Depends(get_admin_session)]
UiForm = Annotated[FormData, Depends(checked_form)]
Options = Annotated[UiOptions, Depends(get_options)]


def text_field(form: FormData, name: str, limit: int = 2000) -> str:
    """A text field of a form ('' when absent or a file), cut at ``limit`` characters
    (choose it above what the field's validator accepts, so that the validator, not the
    cut, answers a value too long)."""
    value = form.get(name)
    return value[:limit] if isinstance(value, str) else ""


def ui_path(*parts: str) -> str:
    """A UI path with each part quoted (list addresses go into paths)."""
    return PREFIX + "".join("/" + quote(p, safe="@") for p in parts)


@dataclass(slots=True)
class Flash:
    kind: str  # ok | error | warn
    text: str


@dataclass(slots=True)
class FieldErrors:
    """Errors of a form by field name, shown next to their fields; ``""``: the form's."""

    errors: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, error: MailflowError | str) -> None:
        self.errors.setdefault(name, str(error))

    def __bool__(self) -> bool:
        return bool(self.errors)


def redirect(request: Request, url: str, flash: Flash | None = None) -> Response:
    """303 to ``url`` (a UI path) with an optional message for the next page; to htmx,
    an ``HX-Redirect``."""
    if request.headers.get("hx-request") == "true":
        response: Response = Response(status_code=200, headers={"HX-Redirect": url})
    else:
        response = RedirectResponse(url, status_code=303)
    if flash is not None:
        data = json.dumps([flash.kind, flash.text[:MAX_FLASH_CHARS]]).encode()
        set_cookie(request, response, FLASH_COOKIE,
                   base64.urlsafe_b64encode(data).decode(), max_age=60)
    return response


def _take_flash(request: Request) -> Flash | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw or len(raw) > 4 * MAX_FLASH_CHARS:
        return None
    try:
        kind, text = json.loads(base64.urlsafe_b64decode(raw.encode()))
    except (ValueError, TypeError):
        return None
    if kind not in ("ok", "error", "warn") or not isinstance(text, str):
        return None
    return Flash(kind, text[:MAX_FLASH_CHARS])


def render(request: Request, template: str, session: UiSession | None,
           context: Mapping[str, Any] | None = None, *, status: int = 200,
           flash: Flash | None = None) -> Response:
    """A page: ``template`` with the caller, its CSRF token, the navigation and the
    message left by the page before (``flash``: one of this page's own)."""
    shown = flash or _take_flash(request)
    values: dict[str, Any] = {
        "session": session, "caller": session.principal if session else None,
        "csrf_token": session.csrf if session else None,
        "nav": nav_for(session.principal, request.url.path) if session else [],
        "flash": shown, "errors": FieldErrors(), **(context or {})}
    response = TEMPLATES.TemplateResponse(request, template, values, status_code=status)
    if FLASH_COOKIE in request.cookies:
        response.delete_cookie(FLASH_COOKIE, path=PREFIX)
    return response


def new_login_secret() -> str:
    return secrets.token_urlsafe(24)
