"""Interactive API docs served from the package: Swagger UI's files come from the
``swagger-ui-py`` wheel (Swagger UI 5, which reads OpenAPI 3.1, the version FastAPI
writes), so ``/api/v1/docs`` works without reaching any CDN, and its start-up script
is a file too, so the page needs no inline script."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Final

from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_PATH: Final = "/api/v1/docs"
OPENAPI_PATH: Final = "/api/v1/openapi.json"
_CSP: Final = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
               "frame-ancestors 'none'")
_HEADERS: Final = {"Content-Security-Policy": _CSP, "X-Frame-Options": "DENY",
                   "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}

_PAGE: Final = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>MailFlow Relay API</title>
<link rel="stylesheet" href="{DOCS_PATH}/static/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{DOCS_PATH}/static/swagger-ui-bundle.js"></script>
<script src="{DOCS_PATH}/init.js"></script>
</body>
</html>
"""

_INIT: Final = f"""window.ui = SwaggerUIBundle({{
  url: "{OPENAPI_PATH}",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  persistAuthorization: false
}});
"""


def swagger_ui_files() -> Path:
    """The folder of Swagger UI's files in ``swagger-ui-py``, found without importing
    the package (its Python part is for other frameworks)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("swagger-ui-py is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def install_docs(app: FastAPI) -> None:
    router = APIRouter(include_in_schema=False)

    @router.get(DOCS_PATH)
    async def docs_page() -> HTMLResponse:
        return HTMLResponse(_PAGE, headers=_HEADERS)

    @router.get(f"{DOCS_PATH}/init.js")
    async def docs_init() -> Response:
        return Response(_INIT, media_type="text/javascript", headers=_HEADERS)

    app.include_router(router)
    app.mount(f"{DOCS_PATH}/static", StaticFiles(directory=swagger_ui_files()),
              name="api-docs-static")
