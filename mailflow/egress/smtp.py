"""SMTP egress: hands mail to a relay through a pool of reused aiosmtplib connections.

Connections are kept open between transactions (a NOOP checks one that sat idle), closed
and replaced on any protocol error, and opened with implicit TLS or STARTTLS and AUTH as
the relay URL says.  Per-recipient RCPT replies are kept apart, so one refused member does
not fail the others sharing the transaction.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Sequence

import aiosmtplib

from mailflow.config import SmtpRelay
from mailflow.egress.base import RecipientReply
from mailflow.errors import EgressUnavailable

log = logging.getLogger(__name__)


class _Connection:
    __slots__ = ("client", "last_used")

    def __init__(self, client: aiosmtplib.SMTP) -> None:
        self.client = client
        self.last_used = time.monotonic()


class SmtpEgress:
    name = "smtp"

    def __init__(self, relay: SmtpRelay, *, pool_size: int, timeout: float,
                 idle_check: float, local_hostname: str | None = None) -> None:
        self.relay = relay
        self.timeout = timeout
        self.idle_check = idle_check
        self.local_hostname = local_hostname
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(pool_size)
        self.connections_opened = 0

    async def start(self) -> None:
        pass  # connections open lazily, so a relay that is down does not stop start-up

    async def send(self, mail_from: str, recipients: Sequence[str],
                   content: bytes) -> list[RecipientReply]:
        async with self._slots:
            conn = await self._acquire()
            try:
                replies = await self._transaction(conn.client, mail_from, recipients, content)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                conn.client.close()
                if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code >= 400:
                    # MAIL FROM or DATA refused: it applies to every recipient.
                    text = exc.message.replace("\n", " ")
                    return [RecipientReply(r, exc.code, text) for r in recipients]
                raise EgressUnavailable(f"{self.relay.host}:{self.relay.port}: "
                                        f"{type(exc).__name__}: {exc}") from exc
            conn.last_used = time.monotonic()
            self._idle.append(conn)
            return replies

    async def _transaction(self, client: aiosmtplib.SMTP, mail_from: str,
                           recipients: Sequence[str], content: bytes) -> list[RecipientReply]:
        try:
            refused, data_reply = await client.sendmail(mail_from, list(recipients), content)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            return [RecipientReply(e.recipient, e.code, e.message.replace("\n", " "))
                    for e in exc.recipients]
        replies = []
        for rcpt in recipients:
            if rcpt in refused:
                answer = refused[rcpt]
                replies.append(RecipientReply(rcpt, answer.code,
                                              answer.message.replace("\n", " ")))
            else:
                replies.append(RecipientReply(rcpt, 250, data_reply.replace("\n", " ")))
        return replies

    async def _acquire(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.client.is_connected:
                continue
            if time.monotonic() - conn.last_used < self.idle_check:
                return conn
            try:
                await conn.client.noop()
                return conn
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                conn.client.close()
        return _Connection(await self._connect())

    async def _connect(self) -> aiosmtplib.SMTP:
        relay = self.relay
        tls_context = None
        if relay.tls != "none":
            tls_context = ssl.create_default_context()
            if not relay.verify_tls:
                tls_context.check_hostname = False
                tls_context.verify_mode = ssl.CERT_NONE
        client = aiosmtplib.SMTP(
            hostname=relay.host, port=relay.port, timeout=self.timeout,
            use_tls=relay.tls == "implicit", start_tls=relay.tls == "starttls",
            tls_context=tls_context, local_hostname=self.local_hostname,
            username=relay.username, password=relay.password,
        )
        try:
            await client.connect()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise EgressUnavailable(f"cannot connect to {relay.host}:{relay.port}: {exc}") \
                from exc
        self.connections_opened += 1
        return client

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                await asyncio.wait_for(conn.client.quit(), timeout=2)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                conn.client.close()
