"""HTTP ingress: ``POST /v1/email`` for mail servers that hand messages over by pipe or API.

A Postfix pipe transport (``mailflow pipe --url`` or ``contrib/postfix/mailflow-curl.sh``)
posts the raw message with the envelope in the query string, as Postfix passes
``${sender}`` and ``${recipient}``.  The answer maps onto what the pipe must tell Postfix:
2xx delivered, 4xx/5xx refused for good, 503 try again later.  Everything else is the
accept service's business, exactly as for SMTP.
"""

from __future__ import annotations

import asyncio
import hmac
import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from mailflow import headers
from mailflow.errors import InputTimeout, MessageTooLarge, SmtpReplyError
from mailflow.http_body import read_limited
from mailflow.ingress.limiter import FailedAuthLimiter
from mailflow.model import Envelope
from mailflow.services.accept import AcceptService
from mailflow.web.problems import error_problem, problem

log = logging.getLogger(__name__)

ACCEPTED_TYPES = ("message/rfc822", "application/octet-stream", "text/plain")


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
                  max_size: int, body_timeout: float) -> APIRouter:
    """``body_timeout``: seconds the whole body may take to arrive, so a body that never
    ends (or trickles in) cannot hold a connection and its buffer for ever."""
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
        408: {"description": "the body did not arrive within http_request_timeout"},
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
            return unread(problem(429, "Too many failed authentications",
                                  "too many requests with a wrong key from this address",
                                  headers={"Retry-After": str(int(wait) + 1)}))
        if not encoded_keys or not authorized(request):
            limiter.failed(client)
            log.warning("refused /v1/email from %s: bad or missing key", client,
                        extra={"action": "auth_failed"})
            detail = ("HTTP ingress is disabled: set MAILFLOW_INGRESS_PSK" if not encoded_keys
                      else "missing or wrong bearer key")
            return unread(problem(401, "Unauthorized", detail,
                                  headers={"WWW-Authenticate": 'Bearer realm="mailflow"'}))
        media_type = request.headers.get("content-type", "message/rfc822").split(";")[0]
        if media_type.strip().lower() not in ACCEPTED_TYPES:
            return unread(problem(415, "Unsupported media type",
                                  f"send the raw message as message/rfc822, not {media_type}"))
        try:
            async with asyncio.timeout(body_timeout):
                raw = await read_limited(request, max_size)
        except TimeoutError:
            log.info("POST /v1/email from %s: the body did not arrive within %g s, "
                     "answered 408", client, body_timeout, extra={"action": "body_timeout"})
            return unread(error_problem(InputTimeout(
                f"the message did not arrive within {body_timeout:g} s")))
        except ClientDisconnect:
            # A client's business, not the relay's fault: one line, no traceback.
            log.info("POST /v1/email from %s: the client went away before the whole "
                     "message arrived", client, extra={"action": "client_disconnected"})
            return problem(400, "Incomplete request", "the client went away")  # not sent
        if raw is None:
            return unread(error_problem(
                MessageTooLarge(f"message larger than {max_size} bytes")))
        try:
            message_id = await service.submit(envelope_from_request(request, raw), raw)
        except SmtpReplyError as error:
            return error_problem(error)
        return JSONResponse({"message_id": message_id, "status": "queued"}, status_code=202)

    return router


def unread(response: Response) -> Response:
    """``response``, closing the connection after it: the request's body was not read.

    uvicorn would go on reading and discarding that body, and every byte of it restarts
    its keep-alive timer: a client trickling a body after a 401 would hold the connection
    for ever.
    """
    response.headers["Connection"] = "close"
    return response


