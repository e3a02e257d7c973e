"""RFC 9457 problem details: every HTTP error the relay returns has this shape."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from mailflow.errors import (
    InvalidInput,
    MailflowError,
    SmtpReplyError,
    TooManyAttempts,
    Unauthenticated,
    spec,
)

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
RETRY_AFTER = "60"


def problem(status: int, title: str, detail: str, *, headers: dict[str, str] | None = None,
            **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def error_problem(error: MailflowError) -> JSONResponse:
    """The problem details of a domain error, status and title from the error table.

    A refusal of a message also says what an SMTP server would have answered; a 503 says
    when to try again.
    """
    row = spec(error)
    headers = {"Retry-After": RETRY_AFTER} if row.http_status == 503 else None
    if isinstance(error, TooManyAttempts):
        headers = {"Retry-After": str(int(error.retry_after) + 1)}
    elif isinstance(error, Unauthenticated):
        headers = {"WWW-Authenticate": 'Bearer realm="mailflow"'}
    if isinstance(error, SmtpReplyError):
        return problem(row.http_status, row.title, error.reason, headers=headers,
                       smtp_code=row.smtp_code, enhanced_status=row.enhanced)
    return problem(row.http_status, row.title, str(error), headers=headers)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


def install_problem_handlers(app: FastAPI) -> None:
    """Every error of ``app`` as problem details: domain errors by the error table,
    unknown paths and methods (404, 405), and invalid requests (422, with each field's
    location and what is wrong with it) instead of FastAPI's ``{"detail": ...}``."""

    @app.exception_handler(MailflowError)
    async def domain_error(request: Request, exc: MailflowError) -> JSONResponse:
        return error_problem(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        title = HTTPStatus(exc.status_code).phrase
        detail = exc.detail if isinstance(exc.detail, str) else title
        if exc.status_code == 404 and detail == title:
            detail = f"nothing at {request.url.path}"
        return problem(exc.status_code, title, detail,
                       headers=dict(exc.headers) if exc.headers else None)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"location": _location(e.get("loc", ())), "message": str(e.get("msg", ""))}
                  for e in exc.errors()]
        detail = "; ".join(f"{e['location']}: {e['message']}" for e in errors[:5])
        return problem(spec(InvalidInput).http_status, spec(InvalidInput).title,
                       detail or "invalid request", errors=errors)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path,
                      extra={"action": "http_internal_error"})
        row = spec(MailflowError)
        return problem(row.http_status, row.title, "the relay could not answer this request; "
                       "its log says why")
