"""SMTP egress: hands mail to a relay through a pool of reused, pipelining connections.

Connections are kept open between transactions (a NOOP checks one that sat idle), closed
and replaced on any protocol error, and opened with implicit TLS or STARTTLS and AUTH as
the relay URL says.  Per-recipient RCPT replies are kept apart, so one refused member does
not fail the others sharing the transaction.  The wire work is
:mod:`mailflow.egress.smtp_client`'s; this module owns the pool and turns the server's
replies into one answer per recipient.  :class:`mailflow.egress.lmtp.LmtpEgress` is this
pool with the client in LMTP mode.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Sequence

from mailflow.egress.base import PerContent, RecipientReply
from mailflow.egress.smtp_client import (
    Reply,
    SmtpClient,
    SmtpClientError,
    SmtpProtocolError,
    Streamed,
    TransactionReplies,
    dot_stuffed,
)
from mailflow.errors import EgressUnavailable
from mailflow.memory import DEFAULT_BUDGET, item_limit
from mailflow.smtp_relay import SmtpRelay

log = logging.getLogger(__name__)

_CONNECTION_ERRORS = (SmtpProtocolError, OSError, TimeoutError)


class _Connection:
    __slots__ = ("client", "last_used")

    def __init__(self, client: SmtpClient) -> None:
        self.client = client
        self.last_used = time.monotonic()


class SmtpEgress:
    name = "smtp"
    lmtp = False  # the protocol the pooled clients speak (LmtpEgress says True)

    def __init__(self, relay: SmtpRelay, *, pool_size: int, timeout: float,
                 idle_check: float, local_hostname: str | None = None,
                 transaction_timeout: float = 600.0,
                 payload_cache: int = DEFAULT_BUDGET.payloads) -> None:
        self.relay = relay
        self.timeout = timeout  # for each reply
        # For a whole transaction, MAIL to the last reply: a next hop answering each
        # command just within ``timeout`` (a tarpit) cannot hold a connection forever.
        self.transaction_timeout = transaction_timeout
        self.idle_check = idle_check
        self.local_hostname = local_hostname or "localhost"
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(pool_size)
        self._context: ssl.SSLContext | None = None
        # Dot-stuffed copies kept with the copies they come from, by id(content) (the
        # content is kept so the id cannot be reused): the scheduler sends one copy many
        # times, one post after the other, so a few recent copies are all that is reused.
        # A content too large to keep is stuffed as it is written instead.
        self._payloads: PerContent[tuple[bytes, bool]] = PerContent(
            payload_cache, lambda content, payload: len(content) + len(payload[0]),
            max_item=item_limit(payload_cache))

    async def start(self) -> None:
        pass  # connections open lazily, so a relay that is down does not stop start-up

    async def send(self, mail_from: str, recipients: Sequence[str],
                   content: bytes, *, once: bool = False) -> list[RecipientReply]:
        """``once``: nothing will send this content object again (the child process
        got it for this one transaction), so its payload is not kept: a personalized
        list's copies would only push out the payloads of shared ones."""
        data, eight_bit = self._payload(content, keep=not once)
        async with self._slots:
            conn = await self._acquire()
            bound = asyncio.timeout(self.transaction_timeout)
            try:
                async with bound:
                    replies = await conn.client.send(mail_from, recipients, data,
                                                     eight_bit=eight_bit)
            except _CONNECTION_ERRORS as exc:
                conn.client.close()
                reason = (f"the transaction took longer than {self.transaction_timeout:g} s"
                          if bound.expired() else f"{type(exc).__name__}: {exc}")
                raise EgressUnavailable(f"{self.relay.host}:{self.relay.port}: {reason}"
                                        ) from exc
            conn.last_used = time.monotonic()
            self._idle.append(conn)
        return per_recipient(recipients, replies)

    def _payload(self, content: bytes, keep: bool = True) -> tuple[bytes | Streamed, bool]:
        """The DATA payload of ``content`` and whether it has 8-bit bytes (made once, or
        for a content too large to keep with its copy, as it is written)."""
        payload = self._payloads.get(content)
        if payload is not None:
            return payload
        if 2 * len(content) > self._payloads.max_item:
            return Streamed(content), not content.isascii()
        payload = (dot_stuffed(content), not content.isascii())
        if keep:
            self._payloads.put(content, payload)
        return payload

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
            except _CONNECTION_ERRORS:
                conn.client.close()
        return _Connection(await self._connect())

    def _tls_context(self) -> ssl.SSLContext | None:
        """The pool's one TLS context (none for a plain relay), built at first use.

        Building a context loads the system's CA certificates, a CPU cost every new
        connection would otherwise pay on the child's event loop.
        """
        if self.relay.tls == "none":
            return None
        if self._context is None:
            context = ssl.create_default_context()
            if not self.relay.verify_tls:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._context = context
        return self._context

    async def _connect(self) -> SmtpClient:
        relay = self.relay
        try:
            client = await SmtpClient.connect(
                relay.host, relay.port, reply_timeout=self.timeout,
                local_hostname=self.local_hostname, tls=relay.tls,
                tls_context=self._tls_context(),
                username=relay.username, password=relay.password, lmtp=self.lmtp)
        except (SmtpClientError, *_CONNECTION_ERRORS) as exc:
            raise EgressUnavailable(f"cannot connect to {relay.host}:{relay.port}: {exc}") \
                from exc
        return client

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                await asyncio.wait_for(conn.client.quit(), timeout=2)
            except _CONNECTION_ERRORS:
                conn.client.close()


def per_recipient(recipients: Sequence[str],
                  replies: TransactionReplies) -> list[RecipientReply]:
    """One answer per recipient: MAIL's refusal, else its RCPT's, else DATA's end.

    Over LMTP the end of DATA has one reply per accepted recipient, taken in RCPT order.
    """
    if not replies.mail.ok:
        return [_answer(r, replies.mail) for r in recipients]
    if replies.delivered is not None:
        return _per_recipient_lmtp(recipients, replies, replies.delivered)
    answers = []
    for recipient, rcpt in zip(recipients, replies.recipients, strict=True):
        answers.append(_answer(recipient, rcpt if not rcpt.ok else replies.data))
    return answers


def _answer(recipient: str, reply: Reply) -> RecipientReply:
    return RecipientReply(recipient, reply.code, reply.text.replace("\n", " "))


def _per_recipient_lmtp(recipients: Sequence[str], replies: TransactionReplies,
                        delivered: list[Reply]) -> list[RecipientReply]:
    answers = []
    after_data = iter(delivered)
    for recipient, rcpt in zip(recipients, replies.recipients, strict=True):
        answers.append(_answer(recipient, next(after_data, replies.data) if rcpt.ok else rcpt))
    return answers
