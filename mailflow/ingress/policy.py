"""Postfix policy delegation service: tells Postfix at RCPT time what the relay would refuse.

With ``check_policy_service inet:127.0.0.1:PORT`` in ``smtpd_recipient_restrictions``,
Postfix asks before it accepts a recipient of a list domain, so unknown addresses, and
senders a block entry covers for the recipient, are refused during the SMTP conversation
even when the relay sits behind a pipe or HTTP ingress: no bounce is ever generated
after the fact (no backscatter).

The protocol (postconf(5), SMTPD_POLICY_README): attributes ``name=value``, one a line,
a blank line ends a request; the answer is ``action=...`` and a blank line.  Addresses
outside the relay's domains are none of its business (``DUNNO``): the same Postfix may
serve mailboxes of other domains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from mailflow.config import ListenAddress
from mailflow.errors import SmtpReplyError, policy_answer
from mailflow.services.accept import AcceptService

log = logging.getLogger(__name__)

MAX_REQUEST_LINES = 100
IDLE_TIMEOUT = 300.0


async def decide(service: AcceptService, request: dict[str, str]) -> str:
    """The ``action=`` answer to one policy request."""
    recipient = request.get("recipient", "")
    if request.get("request") != "smtpd_access_policy" or not recipient:
        return "DUNNO"
    try:
        await service.check_recipient(recipient, request.get("sender", ""), count=False)
    except SmtpReplyError as error:
        return policy_answer(error)
    return "DUNNO"


async def serve_client(service: AcceptService, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            request: dict[str, str] = {}
            for _ in range(MAX_REQUEST_LINES):
                line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
                if not line:
                    return  # Postfix closed the connection
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                if not text:
                    break
                name, _, value = text.partition("=")
                request[name] = value
            else:
                log.warning("policy request too long; closing", extra={"action": "policy_error"})
                return
            action = await decide(service, request)
            writer.write(f"action={action}\n\n".encode())
            await writer.drain()
    except (TimeoutError, ConnectionError):
        return
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def start_policy_service(service: AcceptService, address: ListenAddress
                               ) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_client(service, reader, writer)

    return await asyncio.start_server(handle, host=address.host, port=address.port,
                                      reuse_address=True)
