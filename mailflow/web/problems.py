"""RFC 9457 problem details: every HTTP error the relay returns has this shape."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from mailflow.errors import MailflowError, SmtpReplyError, spec

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
    if isinstance(error, SmtpReplyError):
        return problem(row.http_status, row.title, error.reason, headers=headers,
                       smtp_code=row.smtp_code, enhanced_status=row.enhanced)
    return problem(row.http_status, row.title, str(error), headers=headers)
