"""The pages anyone may open: a list's page, its confirmation and unsubscribe pages.

Server-rendered from Jinja2 templates in ``web/templates/public/`` (autoescape on: every
value a visitor or a list owner controls is escaped), one small stylesheet, no script:
the Content-Security-Policy allows nothing but that stylesheet and forms posted back
here.  Self-contained: the logged-in UI has templates of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

TEMPLATES: Final = Path(__file__).with_name("templates")
STYLE_URL: Final = "/public/style.css"
_CSP: Final = ("default-src 'none'; style-src 'self'; form-action 'self'; base-uri 'none'; "
               "frame-ancestors 'none'")
HEADERS: Final = {"Content-Security-Policy": _CSP, "X-Frame-Options": "DENY",
                  "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
                  "Cache-Control": "no-store"}
_ENVIRONMENT: Final = Environment(loader=FileSystemLoader(TEMPLATES),
                                  autoescape=select_autoescape(["html"]),
                                  trim_blocks=True, lstrip_blocks=True)


def page(name: str, status: int = 200, **values: Any) -> HTMLResponse:
    """``public/<name>.html`` rendered with ``values`` (``title`` is every page's)."""
    html = _ENVIRONMENT.get_template(f"public/{name}.html").render(style_url=STYLE_URL,
                                                                   **values)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def message(status: int, title: str, text: str, *, back: str = "") -> HTMLResponse:
    """A page that says one thing (a result, or why nothing was done)."""
    return page("message", status, title=title, text=text, back=back,
                role="alert" if status >= 400 else "status")


def style_router() -> APIRouter:
    router = APIRouter()
    css = (TEMPLATES / "public" / "style.css").read_bytes()

    @router.get(STYLE_URL, include_in_schema=False)
    async def style() -> Response:
        return Response(css, media_type="text/css", headers={
            "Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})

    return router
