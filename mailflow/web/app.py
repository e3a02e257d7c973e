"""HTTP endpoints for operators and monitoring: health, readiness, metrics, queue state."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator, Sequence

import uvicorn
from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mailflow import __version__
from mailflow.metrics import REGISTRY
from mailflow.store.runner import StoreRunner
from mailflow.web.problems import problem


def create_app(runner: StoreRunner, routers: Sequence[APIRouter] = ()) -> FastAPI:
    app = FastAPI(title="MailFlow Relay", version=__version__)
    for router in routers:
        app.include_router(router)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is alive and its event loop answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        """The store answers, so ingresses can accept mail."""
        try:
            counts = await runner.read(runner.repo.delivery_counts)
        except Exception as exc:
            return problem(503, "Store unavailable", type(exc).__name__)
        return JSONResponse({"status": "ready", "deliveries": counts})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/queue")
    async def queue() -> dict[str, dict[str, int]]:
        deliveries = await runner.read(runner.repo.delivery_counts)
        messages = await runner.read(runner.repo.message_counts)
        return {"deliveries": deliveries, "messages": messages}

    return app


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside the relay's own loop: the relay, not uvicorn, owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves so a busy port is a clear start-up error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock
