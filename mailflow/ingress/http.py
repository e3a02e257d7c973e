"""HTTP ingress: ``POST /v1/email`` for mail servers that hand messages over by pipe or API.

A Postfix pipe transport (``mailflow pipe --url`` or ``contrib/postfix/mailflow-curl.sh``)
posts the raw message with the envelope in the query string, as Postfix passes
``${sender}`` and ``${recipient}``.  The answer maps onto what the pipe must tell Postfix:
2xx delivered, 4xx/5xx refused for good, 503 try again later.  Everything else is the
accept service's business, exactly as for SMTP.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import defaultdict, deque

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from mailflow import headers
from mailflow.errors import MessageTooLarge, SmtpReplyError
from mailflow.model import Envelope
from mailflow.services.accept import AcceptService
from mailflow.web.problems import error_problem, problem

log = logging.getLogger(__name__)

ACCEPTED_TYPES = ("message/rfc822", "application/octet-stream", "text/plain")


class FailedAuthLimiter:
    """Counts failed authentications per client address in a sliding window.

    A client over the limit is refused (429) before its key is even looked at, so keys
    cannot be guessed at line speed.
    """

    def __init__(self, max_failures: int, window: float) -> None:
        self.max_failures = max_failures
        self.window = window
        self._failures: defaultdict[str, deque[float]] = defaultdict(deque)

    def blocked_for(self, client: str) -> float:
        """Seconds until ``client`` may try again (0: it may now)."""
        failures = self._failures.get(client)
        if not failures:
            return 0.0
        cutoff = time.monotonic() - self.window
        while failures and failures[0] < cutoff:
            failures.popleft()
        if len(failures) < self.max_failures:
            return 0.0
        return failures[0] - cutoff

    def failed(self, client: str) -> None:
        self._failures[client].append(time.monotonic())
        if len(self._failures) > 10_000:  # bounded memory under a spray of addresses
            self._failures.clear()


def envelope_from_request(request: Request, raw: bytes) -> Envelope:
    """Envelope from ``?from=&to=&to=``; without ``to``, the delivery headers say it."""
    sender = request.query_params.get("from", "")
    rcpts = [r for r in request.query_params.getlist("to") if r.strip()]
    if not rcpts:
        # Only the topmost field: it was added by the last hop, the one that handed the
        # message to us; fields further down are older hops' business.
        header = raw[:headers.header_length(raw)]
        for name in ("X-Original-To", "Delivered-To"):
            values = [v.strip("<> ") for v in headers.field_values(header, name) if v.strip()]
            if values:
                rcpts = values[:1]
                break
    client = request.client.host if request.client else ""
    return Envelope(mail_from=sender, rcpt_tos=tuple(rcpts), peer=client, helo="",
                    protocol="HTTP")


def create_router(service: AcceptService, keys: list[str], limiter: FailedAuthLimiter,
                  max_size: int) -> APIRouter:
    router = APIRouter()
    encoded_keys = [key.encode() for key in keys]

    def authorized(request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        given = token.strip().encode()
        # Compare with every key, always, so timing does not tell which one nearly matched.
        matches = [hmac.compare_digest(given, key) for key in encoded_keys]
        return any(matches)

    @router.post("/v1/email", status_code=202, responses={
        202: {"description": "stored durably; the relay will deliver it"},
        400: {"description": "empty or unparseable message, or no recipient"},
        401: {"description": "missing or wrong pre-shared key"},
        413: {"description": "message larger than max_message_size"},
        415: {"description": "body is not a raw message"},
        422: {"description": "refused for good: unknown recipient, loop, …"},
        429: {"description": "too many failed authentications from this address"},
        503: {"description": "cannot store now; retry after Retry-After seconds"},
    })
    async def receive_email(request: Request) -> Response:
        """Submit one raw RFC 5322 message (``message/rfc822``) for relaying."""
        client = request.client.host if request.client else "unknown"
        wait = limiter.blocked_for(client)
        if wait:
            return problem(429, "Too many failed authentications",
                           "too many requests with a wrong key from this address",
                           headers={"Retry-After": str(int(wait) + 1)})
        if not encoded_keys or not authorized(request):
            limiter.failed(client)
            log.warning("refused /v1/email from %s: bad or missing key", client,
                        extra={"action": "auth_failed"})
            detail = ("HTTP ingress is disabled: set MAILFLOW_INGRESS_PSK" if not encoded_keys
                      else "missing or wrong bearer key")
            return problem(401, "Unauthorized", detail,
                           headers={"WWW-Authenticate": 'Bearer realm="mailflow"'})
        media_type = request.headers.get("content-type", "message/rfc822").split(";")[0]
        if media_type.strip().lower() not in ACCEPTED_TYPES:
            return problem(415, "Unsupported media type",
                           f"send the raw message as message/rfc822, not {media_type}")
        raw = await read_limited(request, max_size)
        if raw is None:
            return error_problem(MessageTooLarge(f"message larger than {max_size} bytes"))
        try:
            message_id = await service.submit(envelope_from_request(request, raw), raw)
        except SmtpReplyError as error:
            return error_problem(error)
        return JSONResponse({"message_id": message_id, "status": "queued"}, status_code=202)

    return router


async def read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it grows past ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
