"""An HTTP proxy that fails the first requests it is told to, then forwards the rest.

Put in front of moto (``AWS_ENDPOINT_URL`` naming the proxy), it answers the first
``faults`` requests whose path starts with ``path_prefix`` as AWS does when it throttles
(HTTP 429, ``TooManyRequestsException``, or any status and code given) and passes every
other request through unchanged; ``hits`` and ``faulted`` count what it saw, and
``bodies`` keeps the bodies of the first :data:`MAX_KEPT` requests on that path (what
the client asked, which the server may not show: SES's ``FeedbackForwardingEmailAddress``
for one).  ``answers`` gives the body of a 200 reply for a path (an API the server lacks:
moto has no SESv2 ``GetAccount``).  A thread
per request, on 127.0.0.1 only; ``with`` starts and stops it.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

MAX_KEPT = 100


class FaultProxy:
    def __init__(self, upstream: str, *, faults: int, path_prefix: str = "/",
                 status: int = 429, code: str = "TooManyRequestsException",
                 message: str = "Maximum sending rate exceeded.",
                 answers: Mapping[str, object] | None = None) -> None:
        target = urlsplit(upstream)
        self.upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self.remaining = faults
        self.path_prefix = path_prefix
        self.status, self.code, self.message = status, code, message
        self.answers = dict(answers or {})
        self.hits = 0
        self.faulted = 0
        self.bodies: list[bytes] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="fault-proxy", daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def _fault_now(self, path: str, body: bytes) -> bool:
        with self._lock:
            if not path.startswith(self.path_prefix):
                return False
            self.hits += 1
            if len(self.bodies) < MAX_KEPT:
                self.bodies.append(body)
            if self.remaining <= 0:
                return False
            self.remaining -= 1
            self.faulted += 1
            return True

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: the test counts instead

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.path in proxy.answers:
                    self._answer(200, [("Content-Type", "application/json")],
                                 json.dumps(proxy.answers[self.path]).encode())
                    return
                if proxy._fault_now(self.path, body):
                    payload = json.dumps({"__type": proxy.code, "message": proxy.message})
                    self._answer(proxy.status, [("Content-Type", "application/json"),
                                                ("x-amzn-ErrorType", proxy.code)],
                                 payload.encode())
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body,
                                 headers={k: v for k, v in self.headers.items()
                                          if k.lower() != "connection"})
                    reply = conn.getresponse()
                    self._answer(reply.status, [
                        (k, v) for k, v in reply.getheaders()
                        if k.lower() not in ("transfer-encoding", "connection",
                                             "content-length")], reply.read())
                finally:
                    conn.close()

            def _answer(self, status: int, headers: list[tuple[str, str]],
                        body: bytes) -> None:
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _relay

        return Handler
