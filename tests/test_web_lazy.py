"""The relay's API and web UI are made on first use (``ManagementOnFirstUse``): until
then mail ingress, health and the public pages are answered without them, and once
made every route answers from the whole app."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import APIRouter, FastAPI

from mailflow.web.app import ManagementOnFirstUse


def _app(name: str, *, management: bool) -> FastAPI:
    app = FastAPI()
    router = APIRouter()

    @router.post("/v1/email")
    async def ingest() -> dict[str, str]:
        return {"app": name}

    app.include_router(router)
    if management:
        @app.get("/api/v1/lists")
        async def lists() -> dict[str, str]:
            return {"app": name}

        @app.get("/ui/")
        async def ui() -> dict[str, str]:
            return {"app": name}
    return app


async def test_management_is_made_once_when_first_asked_for() -> None:
    built: list[str] = []

    def build() -> FastAPI:
        built.append("whole")
        return _app("whole", management=True)

    app = ManagementOnFirstUse(_app("core", management=False), build)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://relay") as http:
        assert (await http.post("/v1/email")).json() == {"app": "core"}
        assert (await http.get("/nowhere")).status_code == 404
        assert built == []  # neither mail nor a stray path makes it

        answers = await asyncio.gather(*(http.get("/api/v1/lists") for _ in range(5)),
                                       http.get("/ui/"))
        assert [a.json() for a in answers] == [{"app": "whole"}] * 6
        assert built == ["whole"]  # once, however many asked at the same time
        assert (await http.post("/v1/email")).json() == {"app": "whole"}
