"""The web UI on the relay's FastAPI app: its routers under ``/ui``, its static files,
its security headers, and HTML error pages for the UI's paths (the API keeps problem
details)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailflow.errors import MailflowError, TooManyAttempts, spec
from mailflow.web.ui import (
    audit,
    auth,
    dashboard,
    dkim,
    domains,
    lists,
    members,
    moderation,
    queue,
    rules,
    suppressions,
    tokens,
    trace,
    users,
)
from mailflow.web.ui.deps import PREFIX, LoginRequired, UiOptions, checked_form, render, ui_path

STATIC: Final = Path(__file__).parent.parent / "static"

#: The UI's routers; each is mounted under ``/ui`` with the CSRF check on every request.
ROUTERS: Final[tuple[APIRouter, ...]] = (
    auth.router, dashboard.router, domains.router, lists.router, members.router,
    audit.router, moderation.router, trace.router, rules.router, queue.router,
    suppressions.router, dkim.router, users.router, tokens.router)

CSP: Final = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
              "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS: Final = (
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"x-content-type-options", b"nosniff"),
)


class SecurityHeaders:
    """Adds the UI's security headers to every response under ``/ui`` (pages are
    never cached either: they show one caller's data)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == "/" or path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        static = path.startswith(PREFIX + "/static/")

        async def send_with_headers(message: Message) -> None:
            # A response with a policy of its own (a held post's sandboxed frame, whose
            # policy is stricter and lets the UI's pages frame it) keeps its headers.
            if message["type"] == "http.response.start" and not any(
                    k.lower() == b"content-security-policy"
                    for k, _ in message.get("headers", [])):
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() not in _OURS]
                headers.extend(SECURITY_HEADERS)
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


_OURS: Final = frozenset(k for k, _ in SECURITY_HEADERS) | {b"cache-control"}


def _is_ui(request: Request) -> bool:
    path = request.url.path
    return path == PREFIX or path.startswith(PREFIX + "/")


async def _delegate(handler: Callable[[Request, Any], Response | Awaitable[Response]],
                    request: Request, exc: Exception) -> Response:
    """Answer as the app's own (problem details) handler does, outside the UI."""
    answer = handler(request, exc)
    return await answer if inspect.isawaitable(answer) else answer


def install_ui(app: FastAPI, options: UiOptions) -> None:
    """Mount the UI (it needs the API's services: ``app.state.api``)."""
    app.state.ui = options
    app.add_middleware(SecurityHeaders)
    app.mount(PREFIX + "/static", StaticFiles(directory=STATIC), name="ui-static")
    for router in ROUTERS:
        app.include_router(router, prefix=PREFIX, include_in_schema=False,
                           dependencies=[Depends(checked_form)])

    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse(PREFIX + "/", status_code=307)

    @app.get(PREFIX, include_in_schema=False)
    async def ui_root() -> Response:
        return RedirectResponse(PREFIX + "/", status_code=307)

    problem_error = app.exception_handlers[MailflowError]
    problem_http = app.exception_handlers[HTTPException]
    problem_invalid = app.exception_handlers[RequestValidationError]

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        target = request.url.path if request.method == "GET" else PREFIX + "/"
        url = ui_path("login") + "?next=" + target.replace("?", "")
        if request.headers.get("hx-request") == "true":
            return Response(status_code=401, headers={"HX-Redirect": url})
        return RedirectResponse(url, status_code=303)

    @app.exception_handler(MailflowError)
    async def domain_error(request: Request, exc: MailflowError) -> Response:
        if not _is_ui(request):
            return await _delegate(problem_error, request, exc)
        row = spec(exc)
        headers = ({"Retry-After": str(int(exc.retry_after) + 1)}
                   if isinstance(exc, TooManyAttempts) else None)
        response = render(request, "error.html", None, {"title": row.title,
                                                        "detail": str(exc)},
                          status=row.http_status)
        response.headers.update(headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        if not _is_ui(request):
            return await _delegate(problem_invalid, request, exc)
        detail = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
                           for e in exc.errors()[:5])
        return render(request, "error.html", None, {"title": "Invalid request",
                                                    "detail": detail}, status=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if not _is_ui(request) or request.url.path.startswith(PREFIX + "/static/"):
            return await _delegate(problem_http, request, exc)
        title = HTTPStatus(exc.status_code).phrase
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else (
            f"There is no page at {request.url.path}." if exc.status_code == 404 else title)
        return render(request, "error.html", None, {"title": title, "detail": detail},
                      status=exc.status_code)
