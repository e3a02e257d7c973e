"""SMTP and LMTP listeners (aiosmtpd): SMTP verbs in, accept-service calls out.

The handler holds no rules: HELO/EHLO/LHLO, MAIL and RCPT arguments are checked by
:mod:`mailflow.pipeline.accept.commands`, RCPT asks the accept service whether the recipient
exists and takes mail from the transaction's sender,
DATA asks it to store the message, and each domain error becomes its reply code.  LMTP is
the same handler answering once per recipient after DATA.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import socket
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP, Session, _DataState, syntax
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from mailflow import headers
from mailflow.errors import SmtpReplyError, StorageUnavailable, TemporaryFailure, smtp_reply
from mailflow.ingress.limits import ConnectionLimiter, LimitedSession, SessionLimits
from mailflow.ingress.replies import EnhancedStatusCodes, advertise
from mailflow.ingress.tls import ServerTls, StartTlsSession
from mailflow.model import Envelope, Verdict
from mailflow.pipeline.accept.commands import check_helo, check_recipient_address, check_sender

if TYPE_CHECKING:  # the listener process imports this module: no store, no settings
    from mailflow.config import ListenAddress

log = logging.getLogger(__name__)

MAX_RECIPIENTS = 1000
IDENT = "MailFlow Relay"


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
# <dot-atom@domain> and the parameters after it: nearly every MAIL and RCPT argument.
_PLAIN_PATH = re.compile(
    rf"\s*<({_ATEXT}+(?:\.{_ATEXT}+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>[ \t]*([^(]*)", re.S)


class _FastPaths:
    """Parse plain ``<local@domain>`` paths without the email package's header parser.

    aiosmtpd parses every MAIL and RCPT argument with ``email._header_value_parser``, a
    general RFC 5322 tokenizer that showed in profiles of the event loop under ingest
    load.  A path that is a plain dot-atom address gets the same result from one
    regular expression; anything else (quoted local parts, comments, ``<>``, UTF-8)
    still goes to aiosmtpd's parser.
    """

    local_part_limit: int

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = _PLAIN_PATH.fullmatch(arg)
        if match is None:
            try:
                return super()._getaddr(arg)  # type: ignore[misc, no-any-return]
            except (AttributeError, IndexError, ValueError):
                # The email package's parser fails on some malformed paths (<a@[x>):
                # aiosmtpd would answer 500 with the exception; it is a bad address.
                return None, None
        address = match.group(1)
        if self.local_part_limit and address.index("@") > self.local_part_limit:
            return None, None
        return address, match.group(2)


class _OneBufferData:
    """aiosmtpd's DATA, the message read into one buffer instead of a list of lines.

    aiosmtpd keeps every line of a message as a bytearray of its own (about 140 bytes of
    memory for a 78-byte line), then joins them: a 25 MB message took its session about
    100 MB.  Here each line goes into one :class:`io.BytesIO`, whose bytes become the
    content without a copy, so the session holds the message about once.  The replies,
    limits and hooks are aiosmtpd's (``decode_data`` is never used by the relay and
    still goes to aiosmtpd's own DATA).
    """

    _decode_data: bool
    data_size_limit: int | None
    line_length_limit: int
    envelope: SmtpEnvelope | None
    transport: asyncio.BaseTransport | None
    _reader: asyncio.StreamReader
    _writer: asyncio.StreamWriter

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if self._decode_data:
            await super().smtp_DATA(arg)  # type: ignore[misc]
            return
        session: Any = self
        if await session.check_helo_needed() or await session.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await session.push("503 Error: need RCPT command")
            return
        if arg:
            await session.push("501 Syntax: DATA")
            return
        await session.push("354 End data with <CR><LF>.<CR><LF>")
        data: io.BytesIO | None = io.BytesIO()  # None once refused: the rest is drained
        state = _DataState.NOMINAL
        size, limit = 0, self.data_size_limit
        partial = False  # in a line longer than the reader's limit
        while self.transport is not None:
            try:
                line = await self._reader.readuntil(b"\r\n")
            except asyncio.CancelledError:
                log.info("connection lost during DATA")
                self._writer.close()
                raise
            except asyncio.LimitOverrunError as overrun:
                if state is _DataState.NOMINAL:
                    state = _DataState.TOO_LONG
                data = None
                line = await self._reader.read(overrun.consumed)
            if not partial and line == b".\r\n":
                break
            size += len(line)
            if state is _DataState.NOMINAL and limit and size > limit:
                state, data = _DataState.TOO_MUCH, None
            if data is not None:
                if len(line) > self.line_length_limit:
                    state, data = _DataState.TOO_LONG, None
                else:
                    data.write(memoryview(line)[1:] if line[:1] == b"." else line)
            partial = not line.endswith(b"\r\n")
        if state is not _DataState.NOMINAL or data is None:
            await session.push("500 Line too long (see RFC5321 4.5.3.1.6)"
                               if state is _DataState.TOO_LONG
                               else "552 Error: Too much mail data")
            session._set_post_data_state()
            return
        content = data.getvalue()  # the buffer's own bytes: no copy
        del data
        self.envelope.content = self.envelope.original_content = content
        status = await session._call_handler_hook("DATA")
        session._set_post_data_state()
        await session.push("250 OK" if status is MISSING else status)


class RelaySMTP(_FastPaths, _OneBufferData, LimitedSession, StartTlsSession,
                EnhancedStatusCodes, SMTP):
    pass


class RelayLMTP(_FastPaths, _OneBufferData, LimitedSession, EnhancedStatusCodes, LMTP):
    pass


class Acceptor(Protocol):
    """What a listener asks: the accept service, here or in the relay process."""

    async def check_recipient(self, address: str, sender: str) -> object: ...
    async def accept(self, envelope: Envelope, raw: bytes) -> str: ...
    async def accept_each(self, envelope: Envelope, raw: bytes) -> list[Verdict]: ...


class RelayHandler:
    """aiosmtpd handler hooks for SMTP; :class:`LmtpHandler` answers per recipient."""

    protocol = "ESMTP"

    def __init__(self, service: Acceptor) -> None:
        self.service = service
        self.accepting = 0          # DATA commands being accepted right now
        self.idle = asyncio.Event()
        self.idle.set()

    @contextlib.contextmanager
    def _accepting(self) -> Iterator[None]:
        self.accepting += 1
        self.idle.clear()
        try:
            yield
        finally:
            self.accepting -= 1
            if not self.accepting:
                self.idle.set()

    async def handle_HELO(self, server: SMTP, session: Session, envelope: SmtpEnvelope,
                          hostname: str) -> str:
        try:
            check_helo(hostname)
        except SmtpReplyError as error:
            session.host_name = None  # refused: the client must greet again before MAIL
            return smtp_reply(error)
        session.host_name = hostname
        return f"250 {server.hostname}"  # as aiosmtpd answers without this hook

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: SmtpEnvelope,
                          hostname: str, responses: list[str]) -> list[str]:
        """EHLO and LMTP's LHLO: ``responses`` is aiosmtpd's own answer, kept if valid."""
        try:
            check_helo(hostname)
        except SmtpReplyError as error:
            session.host_name = None
            return [smtp_reply(error)]
        session.host_name = hostname
        return advertise(responses)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: SmtpEnvelope,
                          address: str, mail_options: list[str]) -> str:
        try:
            check_sender(address)
        except SmtpReplyError as error:
            return smtp_reply(error)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)  # as aiosmtpd does without this hook
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: SmtpEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 too many recipients"
        try:
            check_recipient_address(address)
            await self.service.check_recipient(address, envelope.mail_from or "")
        except SmtpReplyError as error:
            return smtp_reply(error)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)  # as aiosmtpd does without this hook
        return "250 2.1.5 OK"

    async def handle_exception(self, error: Exception) -> str:
        """A bug of ours in a command: the client retries later (aiosmtpd says 500 and
        shows the exception)."""
        log.error("SMTP session error", exc_info=error, extra={"action": "session_error"})
        return smtp_reply(TemporaryFailure("internal error, try again later"))

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        with self._accepting():
            return await self._accept(session, envelope)

    async def _accept(self, session: Session, envelope: SmtpEnvelope) -> str:
        try:
            message_id = await self.service.accept(self._envelope(session, envelope),
                                                   self._content(envelope))
        except SmtpReplyError as error:
            return smtp_reply(error)
        except Exception:
            log.exception("accept failed", extra={"action": "accept_error"})
            return smtp_reply(StorageUnavailable())
        return f"250 2.0.0 OK queued as {message_id}"

    def _envelope(self, session: Session, envelope: SmtpEnvelope) -> Envelope:
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer or "")
        return Envelope(
            mail_from=envelope.mail_from or "", rcpt_tos=tuple(envelope.rcpt_tos),
            # The HELO name goes into the store and into the Received field of every
            # copy: invalid UTF-8 (lone surrogates) would fail the whole group commit,
            # a bare CR would start a header field.
            peer=peer, helo=headers.header_safe(session.host_name or ""),
            protocol=self.protocol + ("S" if session.ssl is not None else ""),  # RFC 3848
        )

    @staticmethod
    def _content(envelope: SmtpEnvelope) -> bytes:
        content = envelope.original_content or envelope.content or b""
        return content if isinstance(content, bytes) else content.encode("utf-8")


class LmtpHandler(RelayHandler):
    protocol = "LMTP"

    async def _accept(self, session: Session, envelope: SmtpEnvelope) -> str:
        try:
            verdicts = await self.service.accept_each(self._envelope(session, envelope),
                                                      self._content(envelope))
        except SmtpReplyError as error:
            return "\r\n".join(smtp_reply(error) for _ in envelope.rcpt_tos)
        except Exception:
            log.exception("accept failed", extra={"action": "accept_error"})
            return "\r\n".join(smtp_reply(StorageUnavailable()) for _ in envelope.rcpt_tos)
        return "\r\n".join(
            smtp_reply(v.error) if v.error else f"250 2.0.0 <{v.recipient}> OK queued as "
                                                 f"{v.message_id}"
            for v in verdicts
        )


class Listener:
    """A listening socket and the sessions it opened, so stopping never waits on a client.

    Closing stops new connections, lets messages being accepted finish (up to ``grace``
    seconds, so their 250 is sent), then closes every session left: an idle or
    half-closed client must not keep the relay from stopping.
    """

    def __init__(self, server: asyncio.Server, handler: RelayHandler,
                 sessions: weakref.WeakSet[SMTP]) -> None:
        self.server = server
        self.handler = handler
        self.sessions = sessions

    async def close(self, grace: float = 5.0) -> None:
        self.server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.handler.idle.wait(), timeout=grace)
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.server.wait_closed(), timeout=grace)


async def start_listener(service: Acceptor, address: ListenAddress | None, *,
                         hostname: str, max_message_size: int, lmtp: bool = False,
                         sock: socket.socket | None = None,
                         limits: SessionLimits | None = None,
                         tls: ServerTls | None = None) -> Listener:
    """Listen on ``address``, or on ``sock`` (bound already, e.g. by the relay process).

    ``limits`` bound its sessions; each listener counts its own connections.  With
    ``tls`` (SMTP only), STARTTLS is offered with the context current when a session
    connects.
    """
    handler = LmtpHandler(service) if lmtp else RelayHandler(service)
    protocol_class = RelayLMTP if lmtp else RelaySMTP
    sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()
    limiter = ConnectionLimiter(limits or SessionLimits())

    def factory() -> SMTP:
        session = protocol_class(handler, data_size_limit=max_message_size,
                                 enable_SMTPUTF8=True, decode_data=False, hostname=hostname,
                                 ident=IDENT, limiter=limiter,
                                 tls_context=tls.context if tls else None,
                                 require_starttls=tls.require if tls else False)
        sessions.add(session)
        return session

    loop = asyncio.get_running_loop()
    if sock is not None:
        server = await loop.create_server(factory, sock=sock)
    else:
        assert address is not None
        server = await loop.create_server(factory, host=address.host, port=address.port,
                                          reuse_address=True)
    return Listener(server, handler, sessions)
