"""An SMTP sink on loopback that records what arrives and answers as a test tells it.

Runs aiosmtpd in its own thread (``aiosmtpd.controller.Controller``), so synchronous tests
and benchmarks can use it.  Fault injection: replies queued for MAIL FROM (``mail_replies``), per
recipient (``rcpt_replies``) or for the DATA command (``data_replies``), used in order
before answering 250.  It announces PIPELINING unless told not to (``pipelining``), and
SMTPUTF8 unless told not to (``smtputf8``; aiosmtpd then refuses UTF-8 addresses).

Faults of a misbehaving next hop, each a field of :class:`SinkHandler` a test sets:

* ``rcpt_delay``: each RCPT is answered after that many seconds (a tarpit); with
  ``pipelining=False`` the client sends one RCPT per ``rcpt_delay``;
* ``max_rcpts``: RCPTs beyond that many in one transaction get ``452 4.5.3``;
* ``refuse_until`` (:meth:`SmtpSink.refuse_for`): until then every new session is
  greeted with ``421 4.3.2`` and closed;
* ``hang``: ``"rcpt"``, RCPT TO arrives and is never answered; ``"data"``, the whole
  content arrives and its reply never comes (both until the client gives up or the sink
  stops); ``data_delay`` is the same with an end;
* ``drop_in_data``: the connection is cut after the first line of the content.

``SmtpSink(lmtp=True)`` speaks LMTP (aiosmtpd's ``LMTP``): LHLO, and after the content one
reply per accepted recipient, taken from ``delivery_replies`` (``fail_delivery``) before
answering 250.  Only the recipients answered 2xx count as received.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from mailflow.testing.ports import listening_socket, port_of

HANG_SECONDS = 3600.0  # a hang lasts until the client gives up or the sink stops


@dataclass(frozen=True, slots=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes  # empty if the sink was told not to keep contents
    at: float
    body_sha256: str = ""  # of the body (after the header section, which relays add to)
    helo: str = ""  # the name the sending client gave in EHLO/HELO (which relay sent it)


@dataclass
class SinkHandler:
    messages: list[Received] = field(default_factory=list)
    rcpt_replies: dict[str, deque[str]] = field(default_factory=dict)
    data_replies: deque[str] = field(default_factory=deque)
    mail_replies: deque[str] = field(default_factory=deque)
    delivery_replies: dict[str, deque[str]] = field(default_factory=dict)  # LMTP only
    lmtp: bool = False
    transactions: int = 0  # DATA answered
    data_received: int = 0  # DATA arrived (answered or still held by ``data_delay``)
    connections: int = 0
    data_delay: float = 0.0  # seconds to wait before answering DATA (a slow next hop)
    pipelining: bool = True  # announce PIPELINING (aiosmtpd reads pipelined commands fine)
    smtputf8: bool = True  # announce SMTPUTF8 (read when a session starts)
    rcpt_delay: float = 0.0  # seconds before each RCPT reply (a tarpit)
    max_rcpts: int | None = None  # RCPTs beyond this many per transaction: 452
    refuse_until: float = 0.0  # time.monotonic() before which sessions get 421 and close
    hang: Literal["", "rcpt", "data"] = ""  # never answer RCPT, or the end of DATA
    drop_in_data: bool = False  # cut the connection after the first line of content
    rcpts_seen: int = 0  # RCPT commands that reached the handler
    drops: int = 0  # connections cut in DATA (``drop_in_data``)
    keep_content: bool = True  # False: only each content's digest (large-message benches)
    lock: threading.Condition = field(default_factory=threading.Condition)

    @property
    def refusing(self) -> bool:
        return time.monotonic() < self.refuse_until

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        with self.lock:
            reply = self.mail_replies.popleft() if self.mail_replies else None
        if reply is not None:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        with self.lock:
            self.rcpts_seen += 1
            self.lock.notify_all()
            queued = self.rcpt_replies.get(address.lower())
            reply = queued.popleft() if queued else None
        if self.hang == "rcpt":
            await asyncio.sleep(HANG_SECONDS)
        if self.rcpt_delay:
            await asyncio.sleep(self.rcpt_delay)
        if reply is not None and not reply.startswith("2"):
            return reply
        if self.max_rcpts is not None and len(envelope.rcpt_tos) >= self.max_rcpts:
            return "452 4.5.3 too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.data_received += 1  # the whole message is here; the reply is not sent yet
            self.lock.notify_all()
        if self.hang == "data":
            await asyncio.sleep(HANG_SECONDS)
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        with self.lock:
            self.transactions += 1
            if self.data_replies:
                return self.data_replies.popleft()
            delivered, replies = list(envelope.rcpt_tos), ["250 2.0.0 OK"]
            if self.lmtp:
                replies = [self._delivery_reply(r) for r in envelope.rcpt_tos]
                delivered = [r for r, reply in zip(envelope.rcpt_tos, replies, strict=True)
                             if reply.startswith("2")]
            content = envelope.original_content or b""
            if delivered:
                kept = bytes(content) if self.keep_content else b""
                body = hashlib.sha256(content.partition(b"\r\n\r\n")[2]).hexdigest()
                self.messages.append(Received(envelope.mail_from or "", tuple(delivered), kept,
                                              time.time(), body, session.host_name or ""))
            self.lock.notify_all()
        return "\r\n".join(replies)  # LMTP: one line per recipient (aiosmtpd's way)

    def _delivery_reply(self, address: str) -> str:
        queued = self.delivery_replies.get(address.lower())
        return queued.popleft() if queued else f"250 2.0.0 <{address}> delivered"


class _FaultySMTP(SMTP):
    """The faults aiosmtpd's handler hooks cannot make: a 421 greeting, a cut in DATA."""

    event_handler: SinkHandler

    async def _handle_client(self) -> None:
        if self.event_handler.refusing:
            await self.push("421 4.3.2 sink.test is not accepting mail; try later")
            assert self.transport is not None
            self.transport.close()
            return
        await super()._handle_client()

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        assert self.envelope is not None
        if not (self.event_handler.drop_in_data and self.envelope.rcpt_tos and not arg):
            await super().smtp_DATA(arg)
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        await self._reader.readuntil(b"\r\n")  # the content has begun: cut it here
        with self.event_handler.lock:
            self.event_handler.drops += 1
            self.event_handler.lock.notify_all()
        assert self.transport is not None
        self.transport.close()


class _FaultyLMTP(_FaultySMTP, LMTP):
    pass


class _CountingController(Controller):
    """aiosmtpd's controller serving a socket bound beforehand (no free-port race)."""

    smtp_options: dict[str, Any]
    sock: socket.socket

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        return self.loop.create_server(self._factory_invoker, sock=self.sock,
                                       ssl=self.ssl_context)

    def factory(self) -> SMTP:
        self.handler.connections += 1
        protocol = _FaultyLMTP if self.handler.lmtp else _FaultySMTP
        return protocol(self.handler, enable_SMTPUTF8=self.handler.smtputf8, decode_data=False,
                        data_size_limit=None, hostname="sink.test", **self.smtp_options)


class SmtpSink:
    """``with SmtpSink() as sink: ...`` - a running sink on 127.0.0.1 and a free port.

    ``ssl_context`` makes it speak implicit TLS; ``smtp_options`` go to aiosmtpd's
    ``SMTP`` (``tls_context`` for STARTTLS, ``authenticator``, ``auth_require_tls`` …);
    ``lmtp`` makes it an LMTP server; ``keep_content=False`` keeps only the digest of
    each body (:attr:`Received.body_sha256`).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 ssl_context: ssl.SSLContext | None = None, lmtp: bool = False,
                 keep_content: bool = True, **smtp_options: Any) -> None:
        self.handler = SinkHandler(lmtp=lmtp, keep_content=keep_content)
        self._controller = _CountingController(self.handler, hostname=host, port=port,
                                               ssl_context=ssl_context)
        self._controller.smtp_options = smtp_options
        self.host = host
        self.port = port

    def start(self) -> SmtpSink:
        """Bind (port 0: a free port, kept from then on) and serve; ready on return."""
        sock = listening_socket(self.host, self.port)
        self.port = self._controller.port = port_of(sock)
        self._controller.sock = sock
        try:
            self._controller.start()
        except BaseException:
            sock.close()
            raise
        self.handler.connections = 0  # the controller's own readiness probe does not count
        return self

    def stop(self) -> None:
        self._controller.stop()  # closes the server and with it the socket

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        scheme = "lmtp" if self.handler.lmtp else "smtp"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def messages(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.messages)

    def recipients(self) -> list[str]:
        return [r for m in self.messages for r in m.rcpt_tos]

    def fail_rcpt(self, address: str, *replies: str) -> None:
        """Answer RCPT TO:<address> with ``replies`` in turn, then accept it."""
        with self.handler.lock:
            self.handler.rcpt_replies.setdefault(address.lower(), deque()).extend(replies)

    def fail_delivery(self, address: str, *replies: str) -> None:
        """LMTP: answer ``address``'s copy after the content with ``replies`` in turn."""
        with self.handler.lock:
            self.handler.delivery_replies.setdefault(address.lower(), deque()).extend(replies)

    def refuse_for(self, seconds: float) -> None:
        """Greet every session that starts in the next ``seconds`` with 421, and close it."""
        self.handler.refuse_until = time.monotonic() + seconds

    def fail_data(self, *replies: str) -> None:
        with self.handler.lock:
            self.handler.data_replies.extend(replies)

    def wait_for_copies(self, recipients: Iterable[str], count: int | None = None,
                        timeout: float = 20.0) -> list[Received]:
        """Block until ``count`` (default: one per recipient) copies for ``recipients``
        arrived, or the timeout passed; returns the messages for them.

        For tests that share a sink: each looks only at its own recipients.
        """
        mine = {r.lower() for r in recipients}
        wanted = len(mine) if count is None else count

        def arrived() -> list[Received]:
            return [m for m in self.handler.messages if mine & {r.lower() for r in m.rcpt_tos}]

        with self.handler.lock:
            self.handler.lock.wait_for(
                lambda: sum(len(mine & {r.lower() for r in m.rcpt_tos})
                            for m in arrived()) >= wanted, timeout)
            return arrived()

    def wait_for_data(self, count: int, timeout: float = 20.0) -> bool:
        """Block until ``count`` messages arrived after DATA (answered or held)."""
        with self.handler.lock:
            return self.handler.lock.wait_for(lambda: self.handler.data_received >= count,
                                              timeout)

    def wait_for_recipients(self, count: int, timeout: float = 20.0) -> list[str]:
        """Block until ``count`` recipient copies arrived (or the timeout passed)."""
        deadline = time.monotonic() + timeout
        with self.handler.lock:
            while True:
                got = [r for m in self.handler.messages for r in m.rcpt_tos]
                remaining = deadline - time.monotonic()
                if len(got) >= count or remaining <= 0:
                    return got
                self.handler.lock.wait(remaining)
