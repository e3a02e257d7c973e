"""A small SMTP client that pipelines: the envelope of a transaction in one write.

Why not aiosmtplib (which the relay used first): it sends a command and waits for its
reply, one round trip per recipient, and its protocol parses one reply per read, so it
cannot pipeline.  Fanning a post out to 50 recipients per transaction is then 53 round
trips where RFC 2920 needs two (MAIL, every RCPT and DATA together; then the content).
On this relay's hot path that difference is most of the egress CPU.

The client is an :class:`asyncio.Protocol` (no stream reader between the socket and the
parser): every read is split into complete replies at once, and waiters take them in
order.  It speaks EHLO, STARTTLS (``loop.start_tls``), implicit TLS, AUTH PLAIN and
LOGIN, SIZE, 8BITMIME and SMTPUTF8, and falls back to one command at a time when the
server does not announce PIPELINING.

The same client speaks LMTP (RFC 2033) when connected with ``lmtp=True``: LHLO instead of
EHLO, and after the content one reply per accepted recipient instead of one for the
transaction.  Everything else (pipelining, TLS, AUTH) is the same protocol.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

_LINE_ENDS = re.compile(rb"\r\n|\r|\n")
_DOT_AFTER_LINE_END = re.compile(rb"(?<=\n)\.")
MAX_REPLY_BYTES = 64 * 1024  # a reply longer than this is a broken or hostile server
STREAM_PIECE = 256 * 1024    # bytes of content stuffed and written at a time (Streamed)


class SmtpProtocolError(Exception):
    """The server broke the protocol or the connection: the connection is unusable."""


class SmtpClientError(Exception):
    """A command the session needs (EHLO, STARTTLS, AUTH) was refused."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


@dataclass(frozen=True, slots=True)
class TransactionReplies:
    """What the server said to one transaction: MAIL, each RCPT (in order), DATA's end.

    Over LMTP ``delivered`` holds the replies after the content, one per accepted
    recipient in RCPT order (``data`` is then the last of them, or DATA's refusal).
    """

    mail: Reply
    recipients: list[Reply]
    data: Reply
    delivered: list[Reply] | None = None


def dot_stuffed(content: bytes) -> bytes:
    """The DATA payload for ``content``: CRLF line ends, leading dots doubled, ``.`` end.

    Computed once per rendered copy by the caller: every recipient transaction of a list
    post sends the same bytes.
    """
    return b"".join(dot_stuffed_pieces(content))


def dot_stuffed_pieces(content: bytes, size: int = STREAM_PIECE
                       ) -> Iterator[bytes | memoryview]:
    """:func:`dot_stuffed` in pieces of about ``size`` bytes, made as they are needed.

    A large content is sent this way, so the relay never holds a second, stuffed copy
    of it.  Pieces end after a line end where the window has one, and never between a
    CR and its LF, so each piece's line ends are normalised on their own; a dot that
    starts a piece is doubled only if the piece starts a line.  A piece with nothing to
    change (CRLF throughout, no line starting with a dot: nearly all mail) is a view of
    the content, not a copy; counting bytes decides that in C.
    """
    view = memoryview(content)
    end_all = len(content)
    start = 0
    line_start = True
    while start < end_all:
        end = min(start + size, end_all)
        if end < end_all:
            newline = content.rfind(b"\n", start, end)
            if newline >= 0:
                end = newline + 1
            elif content[end - 1] == 0x0D and content[end] == 0x0A:
                end += 1
        crlf = content.count(b"\r\n", start, end)
        data: bytes | memoryview
        if content.count(b"\n", start, end) == crlf and content.count(b"\r", start, end) == crlf:
            if content.find(b"\n.", start, end) >= 0:
                data = _DOT_AFTER_LINE_END.sub(b"..", content[start:end])
            else:
                data = view[start:end]
        else:
            data = _DOT_AFTER_LINE_END.sub(b"..", _LINE_ENDS.sub(b"\r\n", content[start:end]))
        if line_start and content[start] == 0x2E:  # "."
            yield b"."
        yield data
        line_start = content[end - 1] in (0x0A, 0x0D)
        start = end
    yield b".\r\n" if end_all and line_start else b"\r\n.\r\n"


@dataclass(frozen=True, slots=True)
class Streamed:
    """A content whose DATA payload is made piece by piece as it is written.

    Its length is the message size RFC 1870 announces in ``SIZE``: CRLF line ends
    counted, neither the doubled dots nor the final dot.
    """

    content: bytes

    def __len__(self) -> int:
        content = self.content
        crlf = content.count(b"\r\n")
        size = len(content) + content.count(b"\n") + content.count(b"\r") - 2 * crlf
        return size if content.endswith((b"\r", b"\n")) else size + 2


class _ReplyReader(asyncio.Protocol):
    """Splits what arrives into replies; ``read(n)`` waits for the next ``n`` of them."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._lines: list[str] = []
        self._replies: deque[Reply] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._wanted = 0
        self._lost: Exception | None = None
        self._writable: asyncio.Future[None] | None = None  # while the transport is full

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    async def drain(self, seconds: float) -> None:
        """Until the transport takes more (what it holds is below its high-water mark)."""
        if self._writable is not None:
            async with asyncio.timeout(seconds):
                await asyncio.shield(self._writable)
        if self._lost is not None:
            raise self._lost

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while True:
            end = buffer.find(b"\r\n", start)
            if end < 0:
                break
            line = bytes(buffer[start:end])
            start = end + 2
            if len(line) < 3 or not line[:3].isdigit():
                self._fail(SmtpProtocolError(f"not an SMTP reply: {line[:80]!r}"))
                return
            self._lines.append(line[4:].decode("utf-8", "replace"))
            if len(line) == 3 or line[3:4] == b" ":  # the last line of a reply
                self._replies.append(Reply(int(line[:3]), "\n".join(self._lines)))
                self._lines = []
        if start:
            del buffer[:start]
        if len(buffer) > MAX_REPLY_BYTES:
            self._fail(SmtpProtocolError("reply line too long"))
            return
        waiter = self._waiter
        if waiter is not None and len(self._replies) >= self._wanted and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(SmtpProtocolError(f"connection lost: {exc}" if exc else "connection closed"))

    def _fail(self, exc: Exception) -> None:
        if self._lost is None:
            self._lost = exc
        if self.transport is not None:
            self.transport.abort()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.resume_writing()  # a writer waiting for room finds the connection lost

    async def read(self, count: int, seconds: float) -> list[Reply]:
        """The next ``count`` replies, in order; the connection is unusable on error."""
        if len(self._replies) < count:
            if self._lost is not None:
                raise self._lost
            self._wanted = count
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(seconds):
                    await self._waiter
            finally:
                self._waiter = None
        return [self._replies.popleft() for _ in range(count)]

    @property
    def broken(self) -> bool:
        return self._lost is not None


class SmtpClient:
    """One SMTP session.  Any exception other than a refused reply leaves it unusable."""

    def __init__(self, reader: _ReplyReader, transport: asyncio.Transport, timeout: float,
                 local_hostname: str, *, lmtp: bool = False) -> None:
        self._reader = reader
        self._transport = transport
        self.timeout = timeout
        self.local_hostname = local_hostname
        self.lmtp = lmtp
        self.extensions: dict[str, str] = {}

    @classmethod
    async def connect(cls, host: str, port: int, *, reply_timeout: float, local_hostname: str,
                      tls: str = "none", tls_context: ssl.SSLContext | None = None,
                      username: str | None = None, password: str | None = None,
                      lmtp: bool = False) -> SmtpClient:
        """Connect, read the greeting, EHLO (LHLO), then STARTTLS and AUTH as asked."""
        loop = asyncio.get_running_loop()
        # Loading the system's CA certificates costs milliseconds of CPU: a plain
        # connection never builds a context, and pools pass theirs in.
        context = None if tls == "none" else tls_context or ssl.create_default_context()
        async with asyncio.timeout(reply_timeout):
            transport, reader = await loop.create_connection(
                _ReplyReader, host, port, ssl=context if tls == "implicit" else None,
                server_hostname=host if tls == "implicit" else None)
        client = cls(reader, transport, reply_timeout, local_hostname, lmtp=lmtp)
        try:
            (greeting,) = await reader.read(1, reply_timeout)
            if greeting.code != 220:
                raise SmtpClientError(greeting.code, greeting.text)
            await client.ehlo()
            if context is not None and tls == "starttls":
                await client.starttls(context, host)
            if username is not None:
                await client.login(username, password or "")
        except BaseException:
            client.close()
            raise
        return client

    @property
    def is_connected(self) -> bool:
        return not self._reader.broken and not self._transport.is_closing()

    @property
    def pipelining(self) -> bool:
        return "pipelining" in self.extensions

    async def ehlo(self) -> None:
        verb = "LHLO" if self.lmtp else "EHLO"
        reply = await self.command(f"{verb} {self.local_hostname}")
        if reply.code != 250:
            raise SmtpClientError(reply.code, reply.text)
        self.extensions = {}
        for line in reply.text.split("\n")[1:]:
            keyword, _, params = line.partition(" ")
            self.extensions[keyword.lower()] = params

    async def starttls(self, context: ssl.SSLContext, host: str) -> None:
        if "starttls" not in self.extensions:
            raise SmtpClientError(502, "5.5.1 the server does not offer STARTTLS")
        reply = await self.command("STARTTLS")
        if reply.code != 220:
            raise SmtpClientError(reply.code, reply.text)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.timeout):
            self._transport = await loop.start_tls(  # type: ignore[assignment]
                self._transport, self._reader, context, server_hostname=host)
        self._reader.transport = self._transport
        await self.ehlo()

    async def login(self, username: str, password: str) -> None:
        mechanisms = self.extensions.get("auth", "").upper().split()
        if "PLAIN" in mechanisms:
            token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
            reply = await self.command(f"AUTH PLAIN {token}")
        elif "LOGIN" in mechanisms:
            reply = await self.command("AUTH LOGIN")
            for secret in (username, password):
                if reply.code != 334:
                    break
                reply = await self.command(base64.b64encode(secret.encode()).decode())
        else:
            raise SmtpClientError(504, "5.5.4 the server offers neither AUTH PLAIN nor LOGIN")
        if reply.code != 235:
            raise SmtpClientError(reply.code, reply.text)

    async def command(self, line: str) -> Reply:
        self._transport.write(line.encode() + b"\r\n")
        (reply,) = await self._reader.read(1, self.timeout)
        return reply

    async def noop(self) -> None:
        reply = await self.command("NOOP")
        if reply.code != 250:
            raise SmtpProtocolError(f"NOOP answered {reply}")

    async def send(self, mail_from: str, recipients: Sequence[str], data: bytes | Streamed,
                   *, eight_bit: bool = False) -> TransactionReplies:
        """One transaction; ``data`` comes from :func:`dot_stuffed`, or is stuffed as it is
        written (:class:`Streamed`).

        With PIPELINING the envelope and DATA go in one write and their replies are read
        together; the content follows only if DATA was answered 354.
        """
        utf8 = not (mail_from.isascii() and all(r.isascii() for r in recipients))
        if utf8 and "smtputf8" not in self.extensions:
            return await self._without_utf8(mail_from, recipients, data, eight_bit)
        mail = f"MAIL FROM:<{mail_from}>"
        if eight_bit and "8bitmime" in self.extensions:
            mail += " BODY=8BITMIME"
        if utf8:
            mail += " SMTPUTF8"
        if "size" in self.extensions:
            mail += f" SIZE={len(data)}"
        envelope = [mail, *(f"RCPT TO:<{r}>" for r in recipients), "DATA"]
        if self.pipelining:
            self._transport.write("".join(f"{line}\r\n" for line in envelope).encode())
            replies = await self._reader.read(len(envelope), self.timeout)
        else:
            replies = await self._lock_step(envelope)
        mail_reply, rcpt_replies, data_reply = replies[0], replies[1:-1], replies[-1]
        if self.lmtp:
            return await self._lmtp_content(mail_reply, rcpt_replies, data_reply, data)
        if data_reply.code == 354:
            await self._write_content(data)
            (data_reply,) = await self._reader.read(1, self.timeout)
        if not (mail_reply.ok and data_reply.ok):
            await self.command("RSET")  # leave a clean session for the next transaction
        return TransactionReplies(mail_reply, list(rcpt_replies), data_reply)

    async def _without_utf8(self, mail_from: str, recipients: Sequence[str], data: bytes | Streamed,
                            eight_bit: bool) -> TransactionReplies:
        """A server without SMTPUTF8 (RFC 6531 3.2): only the UTF-8 addresses are refused.

        The ASCII recipients are sent as if alone; the others get ``553 5.6.7`` in their
        place.  A UTF-8 sender cannot be sent at all.
        """
        refused = Reply(553, "5.6.7 the next hop does not accept UTF-8 addresses")
        ascii_only = [r for r in recipients if r.isascii()]
        if not mail_from.isascii() or not ascii_only:
            return TransactionReplies(refused, [refused] * len(recipients), refused)
        sent = await self.send(mail_from, ascii_only, data, eight_bit=eight_bit)
        replies = iter(sent.recipients)
        return TransactionReplies(
            sent.mail, [next(replies) if r.isascii() else refused for r in recipients],
            sent.data, sent.delivered)

    async def _lmtp_content(self, mail_reply: Reply, rcpt_replies: list[Reply],
                            data_reply: Reply, data: bytes | Streamed) -> TransactionReplies:
        """LMTP's end of a transaction: one reply per accepted recipient (RFC 2033 4.2)."""
        if data_reply.code != 354:
            if mail_reply.ok:
                await self.command("RSET")
            return TransactionReplies(mail_reply, rcpt_replies, data_reply)
        await self._write_content(data)
        # A server that said 354 with no recipient accepted still ends with one reply.
        accepted = max(1, sum(1 for r in rcpt_replies if r.ok))
        delivered = await self._reader.read(accepted, self.timeout)
        return TransactionReplies(mail_reply, rcpt_replies, delivered[-1], delivered)

    async def _write_content(self, data: bytes | Streamed) -> None:
        """The payload after 354; a streamed one waits for the socket between pieces, so
        what the transport holds stays bounded whatever the content's size."""
        if isinstance(data, bytes):
            self._transport.write(data)
            return
        for piece in dot_stuffed_pieces(data.content):
            self._transport.write(piece)
            await self._reader.drain(self.timeout)

    async def _lock_step(self, envelope: list[str]) -> list[Reply]:
        """Without PIPELINING: one command at a time, stopping where the session must."""
        mail = await self.command(envelope[0])
        if not mail.ok:
            skipped = Reply(mail.code, mail.text)
            return [mail] + [skipped] * (len(envelope) - 1)
        rcpts = [await self.command(line) for line in envelope[1:-1]]
        if not any(r.ok for r in rcpts):
            return [mail, *rcpts, Reply(554, "5.5.1 no valid recipients; DATA not sent")]
        return [mail, *rcpts, await self.command("DATA")]

    async def quit(self) -> None:
        try:
            await self.command("QUIT")
        finally:
            self.close()

    def close(self) -> None:
        self._transport.abort()
