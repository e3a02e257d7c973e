"""``POST /v1/ingress/sns``: the SNS webhook through which SES announces mail.

No key of its own: every message must carry a valid SNS signature for a topic listed in
``sns_topics`` (:mod:`mailflow.ingress.sns_signature`); anything else gets 403, a log
line and a count.  A subscription is confirmed by fetching its ``SubscribeURL`` only for
an allowed topic, and only from the host that served the (checked) certificate.  A
notification is answered 200 once its message is durable (or refused for good), 503 when
SNS should deliver it again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import urlsplit

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from mailflow.errors import SmtpReplyError
from mailflow.http_body import read_limited
from mailflow.ingress.http import unread
from mailflow.ingress.ses import SesNotifications
from mailflow.ingress.ses_notification import BadNotification
from mailflow.ingress.sns_signature import ForgedMessage, SnsVerifier
from mailflow.metrics import SNS_REFUSED
from mailflow.web.problems import error_problem, problem

log = logging.getLogger(__name__)

MAX_SNS_BODY = 512 * 1024  # SNS messages are at most 256 KB, and their envelope small
MAX_CERT_SIZE = 16 * 1024


class SnsHttp:
    """The webhook's own HTTP requests to SNS: certificates and subscription
    confirmations, each bounded in time and size; never a redirect followed."""

    def __init__(self, timeout: float) -> None:
        self.client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    async def fetch_cert(self, url: str) -> bytes:
        async with self.client.stream("GET", url) as response:
            response.raise_for_status()
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_CERT_SIZE:
                    raise ValueError("certificate larger than 16 KB")
                chunks.append(chunk)
        return b"".join(chunks)

    async def confirm(self, url: str) -> None:
        response = await self.client.get(url)
        response.raise_for_status()

    async def close(self) -> None:
        await self.client.aclose()


def create_sns_router(verifier: SnsVerifier, notifications: SesNotifications, http: SnsHttp,
                      body_timeout: float) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/ingress/sns", responses={
        200: {"description": "taken (or refused for good): SNS need not send it again"},
        400: {"description": "not an SNS message, or not a notification SES sends"},
        403: {"description": "forged, unsigned, stale, or of a topic not in sns_topics"},
        408: {"description": "the body did not arrive within http_request_timeout"},
        413: {"description": "larger than any SNS message"},
        503: {"description": "cannot take it now; SNS delivers it again"},
    })
    async def receive_sns(request: Request) -> Response:
        """An SNS message: subscription confirmation or SES notification."""
        client = request.client.host if request.client else "unknown"
        try:
            async with asyncio.timeout(body_timeout):
                body = await read_limited(request, MAX_SNS_BODY)
        except (TimeoutError, ClientDisconnect):
            return unread(problem(408, "Request timeout", "the body did not arrive in time"))
        if body is None:
            return unread(problem(413, "Too large", "larger than any SNS message"))
        try:
            message = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            message = None
        if not isinstance(message, dict):
            return problem(400, "Bad request", "the body is not an SNS message (JSON object)")
        try:
            await verifier.verify(message)
        except ForgedMessage as refusal:
            SNS_REFUSED.labels(reason=refusal.reason).inc()
            log.warning("refused an SNS message from %s: %s", client, refusal,
                        extra={"action": "sns_refused", "reason": refusal.reason})
            return problem(403, "Forbidden", str(refusal))
        kind = message["Type"]
        if kind == "SubscriptionConfirmation":
            return await _confirm(message, verifier, http)
        if kind == "UnsubscribeConfirmation":
            log.warning("SNS topic %s unsubscribed this relay", message["TopicArn"],
                        extra={"action": "sns_unsubscribed"})
            return JSONResponse({"status": "noted"})
        return await _notification(message, notifications)

    return router


async def _confirm(message: dict[str, Any], verifier: SnsVerifier, http: SnsHttp) -> Response:
    url, cert_url = message["SubscribeURL"], message["SigningCertURL"]
    here, there = urlsplit(url), urlsplit(cert_url)
    if (here.scheme, here.netloc) != (there.scheme, there.netloc) \
            or not verifier.cert_url_allowed(cert_url):
        SNS_REFUSED.labels(reason="subscribe_url").inc()
        log.warning("refused to confirm an SNS subscription at %s: not the certificate's "
                    "host", url[:200], extra={"action": "sns_refused"})
        return problem(403, "Forbidden", "SubscribeURL is not on the certificate's host")
    try:
        await http.confirm(url)
    except (httpx.HTTPError, OSError) as exc:
        log.warning("cannot confirm the SNS subscription to %s: %s", message["TopicArn"], exc,
                    extra={"action": "sns_confirm_failed"})
        return problem(503, "Try again later", "the subscription could not be confirmed")
    log.info("confirmed the SNS subscription to %s", message["TopicArn"],
             extra={"action": "sns_confirmed"})
    return JSONResponse({"status": "confirmed"})


async def _notification(message: dict[str, Any], notifications: SesNotifications
                        ) -> Response:
    try:
        notification = json.loads(message["Message"])
        if not isinstance(notification, dict):
            raise BadNotification("the SNS Message is not a JSON object")
        await notifications.handle(notification)
    except (json.JSONDecodeError, RecursionError, BadNotification) as exc:
        log.warning("SNS message %s is no SES notification we read: %s",
                    str(message.get("MessageId"))[:80], exc,
                    extra={"action": "ses_bad_notification"})
        return problem(400, "Bad notification", str(exc))
    except SmtpReplyError as error:  # temporary: SNS tries again
        log.info("SNS message %s not taken now: %s", str(message.get("MessageId"))[:80],
                 error.reason, extra={"action": "ses_deferred"})
        return error_problem(error)
    except Exception:  # a bug must not lose the notification: SNS delivers it again
        log.exception("SNS message %s failed", str(message.get("MessageId"))[:80],
                      extra={"action": "ses_error"})
        return problem(503, "Try again later", "the notification could not be handled now")
    return JSONResponse({"status": "ok"})
