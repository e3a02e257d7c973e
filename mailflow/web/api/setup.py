"""The API on the relay's FastAPI app: routers under ``/api/v1``, its docs, and an
OpenAPI document that says what the errors really look like (problem details)."""

from __future__ import annotations

from typing import Any, Final

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from mailflow.web.api import (
    audit,
    bounces,
    dkim,
    domains,
    held,
    lists,
    members,
    operations,
    queue,
    requests,
    rules,
    tokens,
    users,
)
from mailflow.web.api.deps import ApiDeps
from mailflow.web.api.docs import install_docs

PREFIX: Final = "/api/v1"
ROUTERS: Final = (domains.router, lists.router, members.router, rules.router, held.router,
                  bounces.router, dkim.router, queue.router, operations.router,
                  tokens.router, users.router, audit.router, requests.router)

PROBLEM_SCHEMA: Final[dict[str, Any]] = {
    "title": "Problem",
    "description": "RFC 9457 problem details",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {"type": "array", "items": {
            "type": "object", "properties": {"location": {"type": "string"},
                                             "message": {"type": "string"}}}},
    },
}
ERROR_STATUSES: Final = {
    "400": "bad request", "401": "no token, or an unknown one",
    "403": "the token or its user may not do this", "404": "no such object",
    "409": "it exists already, or others depend on it",
    "413": "request body too large",
    "422": "invalid input: the problem says which field and why",
    "429": "too many failed logins or tokens: wait Retry-After seconds",
}


def install_api(app: FastAPI, deps: ApiDeps) -> None:
    app.state.api = deps
    for router in ROUTERS:
        app.include_router(router, prefix=PREFIX)
    install_docs(app)


def problem_openapi(app: FastAPI) -> dict[str, Any]:
    """``app``'s OpenAPI document with every error response as problem details."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                         description=app.description)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = PROBLEM_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, item in schema.get("paths", {}).items():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            codes = ERROR_STATUSES if path.startswith(PREFIX) else {
                code: text for code, text in ERROR_STATUSES.items() if code in responses}
            for code, text in codes.items():
                responses[code] = {"description": responses.get(code, {}).get(
                    "description", text), "content": problem}
    app.openapi_schema = schema
    return schema
