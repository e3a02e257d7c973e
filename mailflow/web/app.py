"""HTTP endpoints for operators and monitoring: health, readiness, metrics, queue state."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Literal

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from mailflow import __version__
from mailflow.errors import Forbidden
from mailflow.metrics import REGISTRY
from mailflow.services.gauges import QueueGauges
from mailflow.services.readiness import Readiness
from mailflow.store.runner import StoreRunner
from mailflow.web.api.deps import ApiDeps, authenticate
from mailflow.web.api.docs import OPENAPI_PATH
from mailflow.web.problems import install_problem_handlers, problem
from mailflow.web.ui.deps import UiOptions

log = logging.getLogger(__name__)

#: Who may read ``/metrics`` and ``/v1/queue`` (setting ``monitoring_access``).
MonitoringAccess = Literal["loopback", "token", "open"]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(runner: StoreRunner, routers: Sequence[APIRouter] = (), *,
               readiness: Readiness | None = None, gauges: QueueGauges | None = None,
               api: ApiDeps | None = None, ui: UiOptions | None = None,
               monitoring_access: MonitoringAccess = "loopback",
               management: bool = True) -> FastAPI:
    """The relay's HTTP app; ``api``: the services behind ``/api/v1`` and the web UI
    under ``/ui`` (without them, neither, and monitoring without a token is for
    loopback clients only or nobody).  ``management=False``: with ``api`` for the
    monitoring's tokens, but without the API's and the UI's routes
    (:class:`ManagementOnFirstUse` adds them when first asked for)."""
    app = FastAPI(title="MailFlow Relay", version=__version__, docs_url=None,
                  redoc_url=None, openapi_url=OPENAPI_PATH if management else None)
    if management:
        app.openapi = lambda: _problem_openapi(app)  # type: ignore[method-assign]
    install_problem_handlers(app)
    for router in routers:
        app.include_router(router)
    if api is not None and management:
        from mailflow.web.api.setup import install_api
        from mailflow.web.ui.setup import install_ui

        install_api(app, api)
        install_ui(app, ui or UiOptions())

    async def monitoring(request: Request) -> None:
        """Without a token only from loopback (``monitoring_access=loopback``), or from
        anywhere (``open``); else any valid API token, of either scope."""
        client = request.client.host if request.client else ""
        if monitoring_access == "open" or (monitoring_access == "loopback"
                                           and _is_loopback(client)):
            return
        if api is None:
            raise Forbidden("monitoring needs an API token, and this app has no API")
        await authenticate(request, api)

    guarded = [Depends(monitoring)]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is alive and its event loop answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        """The store, the blob store and the default egress answer: mail can be taken
        and sent.  A 503 names the checks that failed."""
        if readiness is None:
            try:
                await runner.read(runner.repo.next_due_at)
            except Exception as exc:
                return problem(503, "Not ready", f"store: {type(exc).__name__}",
                               failed=["store"])
            return JSONResponse({"status": "ready", "checks": {"store": "ok"}})
        checks = await readiness.checks()
        failed = [c for c in checks if not c.ok]
        if failed:
            return problem(503, "Not ready",
                           "; ".join(f"{c.name}: {c.detail}" for c in failed),
                           failed=[c.name for c in failed],
                           headers={"Retry-After": "5"})
        return JSONResponse({"status": "ready", "checks": {c.name: "ok" for c in checks}})

    @app.get("/metrics", dependencies=guarded)
    async def metrics() -> Response:
        body = generate_latest(REGISTRY)
        if gauges is not None:
            try:
                await gauges.refresh()
            except Exception:  # the counters still answer; the gauges' age shows
                log.exception("reading the queue gauges failed",
                              extra={"action": "gauges_error"})
            body += generate_latest(gauges.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/queue", dependencies=guarded)
    async def queue() -> dict[str, dict[str, int]]:
        deliveries = await runner.read(runner.repo.delivery_counts)
        messages = await runner.read(runner.repo.message_counts)
        return {"deliveries": deliveries, "messages": messages}

    return app


def _problem_openapi(app: FastAPI) -> dict[str, Any]:
    from mailflow.web.api.setup import problem_openapi

    return problem_openapi(app)


def _is_management(path: str) -> bool:
    """The paths of the API (with its documents) and of the web UI."""
    return path == "/" or path.startswith(("/api", "/ui"))


class ManagementOnFirstUse:
    """The relay's HTTP app, whose API and web UI are made when first asked for.

    Their modules and routes (the REST API's models and routers, the UI's pages and
    templates) are some megabytes of a relay's memory that most relays never use: mail
    comes in by SMTP, and the list owners manage with the CLI, if at all.  Until a
    request asks for ``/``, ``/ui`` or ``/api``, requests go to ``core`` (mail ingress,
    health, metrics, the public list pages); from then on all go to the whole app,
    made by ``build`` with the same routers and services (so a route answers the same
    either way).  It is made on a thread: importing it takes the event loop's time.
    """

    def __init__(self, core: ASGIApp, build: Callable[[], ASGIApp]) -> None:
        self.core = core
        self.build = build
        self.whole: ASGIApp | None = None
        self._building = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.whole is None and not (scope["type"] == "http"
                                       and _is_management(scope["path"])):
            await self.core(scope, receive, send)
            return
        if self.whole is None:
            async with self._building:
                if self.whole is None:
                    self.whole = await asyncio.to_thread(self.build)
        await self.whole(scope, receive, send)


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside the relay's own loop: the relay, not uvicorn, owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


_BUSY_BODY = (b'{"type":"about:blank","title":"Too many connections","status":503,'
              b'"detail":"the relay has too many HTTP connections open; try again later"}')
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n"
         b"retry-after: 5\r\nconnection: close\r\ncontent-length: "
         + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY)
REFUSAL_LOG_INTERVAL = 60.0  # seconds between two log lines about refused connections


class HeadDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's head and a bound on
    the connections open at once.

    uvicorn has neither: a client that sends half a request line, and then nothing,
    holds its connection for ever, and its own ``limit_concurrency`` answers each
    request beyond it (in plain text, with a log line each) but keeps the connections.
    The deadline runs from the connection's start, and again from the end of each
    response, until the head of the next request is in; its body then has the route's
    deadline.  A connection beyond ``max_connections`` gets a ``503`` problem and is
    closed before any request is read.
    """

    head_timeout: ClassVar[float] = 60.0
    max_connections: ClassVar[int] = 1000
    _refused: ClassVar[int] = 0
    _next_report: ClassVar[float] = 0.0
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:  # this one is counted too
            self._refuse(transport)
            return
        self._arm()

    def _refuse(self, transport: asyncio.Transport) -> None:
        cls = type(self)
        cls._refused += 1
        now = self.loop.time()
        if now >= cls._next_report:
            log.warning("refused %d HTTP connection(s): more than http_max_connections=%d "
                        "open", cls._refused, self.max_connections,
                        extra={"action": "connections_refused"})
            cls._refused = 0
            cls._next_report = now + REFUSAL_LOG_INTERVAL
        transport.write(_BUSY)
        transport.close()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's head is in: its cycle has begun
            self._disarm()

    def on_response_complete(self) -> None:
        self._arm()  # first: a pipelined request may begin in there, and disarm it
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_deadline = self.loop.call_later(self.head_timeout, self._head_late)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_late(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            client = self.client[0] if self.client else "unknown"
            log.info("HTTP client %s sent no complete request within %g s: disconnected",
                     client, self.head_timeout, extra={"action": "request_head_timeout"})
            self.transport.close()


def head_deadline_protocol(timeout: float, max_connections: int
                           ) -> type[HeadDeadlineProtocol]:
    """The protocol class uvicorn builds each connection with, for these bounds."""

    class Protocol(HeadDeadlineProtocol):
        head_timeout = timeout

    Protocol.max_connections = max_connections
    return Protocol


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves so a busy port is a clear start-up error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock
