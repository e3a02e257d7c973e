"""RFC 9457 problem details: every HTTP error the relay returns has this shape."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from mailflow.errors import SmtpReplyError

MEDIA_TYPE = "application/problem+json"


def problem(status: int, title: str, detail: str, *, headers: dict[str, str] | None = None,
            **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def smtp_problem(status: int, title: str, error: SmtpReplyError,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    """A refusal that also says what an SMTP server would have answered."""
    return problem(status, title, error.reason, headers=headers, smtp_code=error.code,
                   enhanced_status=error.enhanced)
