"""Bounds on the SMTP/LMTP sessions that a client on the network cannot push past.

Why: without them, idle connections pile up until the process runs out of file
descriptors and every legitimate sender is locked out, a client sending one byte a
second holds a session for as long as it likes, and a session can be used to ask about
recipients forever.  Each bound ends the session with a ``421`` (the client may come
back later) and frees its connection:

* connections at once on one listener, in total and per client address (IPv4 address,
  IPv6 /64: one host usually holds a whole /64), refused with ``421 4.7.0`` before the
  greeting;
* the **idle timeout**: the longest wait for the client's next command, and the
  **DATA timeout**: the longest the whole message may take, from the ``354`` to the
  final dot (a slow sender is not kept alive line by line), both ``421 4.4.2``;
* commands in one session, and refused recipients in one session (``421 4.7.0`` after
  the reply to the command that reached the bound).

While the relay itself works on a command (a recipient lookup, storing a message) the
client's timers do not run: that wait is the relay's, bounded by its own timeouts, and
cutting it would only make the client send the message again.  A fixed
:data:`SERVER_TURN_TIMEOUT` still ends a session whose command never gets an answer.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any, Literal, cast

from aiosmtpd.smtp import SMTP

log = logging.getLogger(__name__)

# Longer than the relay's own longest wait for a commit (services.commit.COMMIT_WAIT):
# only a relay that never answers reaches it.
SERVER_TURN_TIMEOUT = 300.0

# Seconds a session being closed may take to send its last reply.
HANG_UP_GRACE = 2.0
# Seconds between two log lines about refused connections.
REFUSAL_LOG_INTERVAL = 60.0

Phase = Literal["idle", "data", "server"]


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """The settings ``smtp_max_connections`` … ``smtp_max_failed_recipients``."""

    max_connections: int = 1000
    max_connections_per_client: int = 50
    idle_timeout: float = 300.0
    data_timeout: float = 600.0
    max_commands: int = 10_000
    max_failed_recipients: int = 20


def client_key(peer: object) -> str:
    """The address a client's connections are counted under.

    IPv4 addresses count one by one, IPv6 addresses by their /64 (a host is usually
    given a whole /64, so counting single addresses would let it open connections
    without end); an IPv4 address mapped into IPv6 counts as itself.
    """
    host = peer[0] if isinstance(peer, tuple) and peer else peer
    try:
        address = ipaddress.ip_address(str(host).partition("%")[0])
    except ValueError:
        return str(host)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class ConnectionLimiter:
    """The sessions open on one listener, in total and per client address.

    Its table holds only clients with a session open, so it is bounded by
    ``max_connections``.  Refusals are logged at most once per
    :data:`REFUSAL_LOG_INTERVAL`, with their count: a client that reconnects as fast as
    it can must not flood the log.
    """

    def __init__(self, limits: SessionLimits) -> None:
        self.limits = limits
        self.total = 0
        self._per_client: dict[str, int] = {}
        self._refused = 0               # since the last report
        self._next_report = 0.0

    def admit(self, client: str) -> str | None:
        """Count a new session of ``client``, or say why it is refused."""
        if self.total >= self.limits.max_connections:
            return self._refusal(client, "too many connections, try again later")
        count = self._per_client.get(client, 0)
        if count >= self.limits.max_connections_per_client:
            return self._refusal(client,
                                 "too many connections from your address, try again later")
        self.total += 1
        self._per_client[client] = count + 1
        return None

    def _refusal(self, client: str, reason: str) -> str:
        self._refused += 1
        now = time.monotonic()
        if now >= self._next_report:
            log.warning("refused %d connection(s) (the latest from %s: %s); limits "
                        "smtp_max_connections=%d, smtp_max_connections_per_client=%d",
                        self._refused, client, reason, self.limits.max_connections,
                        self.limits.max_connections_per_client,
                        extra={"action": "connections_refused"})
            self._refused = 0
            self._next_report = now + REFUSAL_LOG_INTERVAL
        return reason

    def release(self, client: str) -> None:
        count = self._per_client.pop(client, 0) - 1
        if count > 0:
            self._per_client[client] = count
        self.total -= 1


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; return the new one.

    The common soft limit (1,024) lets a thousand idle connections take every descriptor
    of a process whose hard limit allows many more.  A limit that cannot be raised stays
    as it is (with a warning): the connection limits still hold.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit: Linux caps it at fs.nr_open (2^20 by default), macOS at
    # OPEN_MAX.
    targets = (hard,) if hard != resource.RLIM_INFINITY else (1 << 20, 10_240)
    for target in targets:
        if target <= soft:
            return soft
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        return target
    log.warning("cannot raise the open files limit above %d", soft,
                extra={"action": "open_files_limit"})
    return soft


def _final(line: str) -> bool:
    """Whether a reply (its last line) ends the server's turn: ``250 x``, not ``250-x``."""
    return line[3:4] != "-"


class LimitedSession:
    """The bounds of one session, as a mixin of aiosmtpd's ``SMTP``/``LMTP`` classes.

    aiosmtpd (1.4) has one timer, reset whenever a command arrives and never during
    DATA, and closes without a reply.  This mixin takes that timer over through the
    methods aiosmtpd uses for it (``_reset_timeout``, ``_timeout_cb``) and tells the
    client's turn (idle or DATA timeout, started by each reply the relay sends) from
    the relay's (:data:`SERVER_TURN_TIMEOUT`, started when a command or the end of the
    message arrives).  Replies are counted in :meth:`push`: every command gets exactly
    one final reply, whatever the client pipelines.
    """

    # Provided by aiosmtpd's SMTP class.
    hostname: str
    transport: asyncio.BaseTransport | None
    _handler_coroutine: asyncio.Task[None] | None
    _timeout_handle: asyncio.TimerHandle | None  # aiosmtpd's timer, cancelled when the
                                                 # connection is lost

    def __init__(self, *args: Any, limiter: ConnectionLimiter, **kwargs: Any) -> None:
        super().__init__(*args, timeout=limiter.limits.idle_timeout,  # type: ignore[call-arg]
                         **kwargs)
        self.limiter = limiter
        self.limits = limiter.limits
        self._client = ""
        self._admitted = False
        self._refused = False
        self._hung_up = False
        self._greeted = False
        self._in_rcpt = False
        self._commands = 0
        self._failed_recipients = 0
        self._phase: Phase = "idle"

    # -- connections ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # a new connection (not TLS starting over one)
            self._client = client_key(transport.get_extra_info("peername"))
            refusal = self.limiter.admit(self._client)
            if refusal is not None:
                self._refused = True
                _hang_up(transport, f"421 4.7.0 {self.hostname} {refusal}")
                return  # no session: aiosmtpd never sees this connection
            self._admitted = True
        super().connection_made(transport)  # type: ignore[misc]
        self._arm("idle")

    def data_received(self, data: bytes) -> None:
        if not self._refused:  # a refused connection has no session to read it
            super().data_received(data)  # type: ignore[misc]

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        return super().eof_received()  # type: ignore[misc, no-any-return]

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._admitted:
            self._admitted = False
            self.limiter.release(self._client)
        super().connection_lost(error)  # type: ignore[misc]

    # -- timers -----------------------------------------------------------------------------

    def _arm(self, phase: Phase) -> None:
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        self._phase = phase
        duration = {"idle": self.limits.idle_timeout, "data": self.limits.data_timeout,
                    "server": SERVER_TURN_TIMEOUT}[phase]
        self._timeout_handle = asyncio.get_running_loop().call_later(duration,
                                                                     self._timeout_cb)

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd calls this when a command arrives (and at connect): the relay's turn."""
        self._arm("server")

    def _timeout_cb(self) -> None:
        timeout, what = {
            "idle": (self.limits.idle_timeout, "no command"),
            "data": (self.limits.data_timeout, "message not complete"),
            "server": (SERVER_TURN_TIMEOUT, "no answer from the relay"),
        }[self._phase]
        log.info("session of %s timed out: %s after %g s", self._client, what, timeout,
                 extra={"action": "session_timeout"})
        code = "4.3.0" if self._phase == "server" else "4.4.2"
        self._end(f"421 {code} {self.hostname} {what} after {timeout:g} s, closing connection")

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        if self._hung_up:  # a command pipelined after the goodbye: never acted upon
            raise asyncio.CancelledError
        if command == "DATA":  # the whole message is in: storing it is the relay's turn
            self._arm("server")
        return await super()._call_handler_hook(command, *args)  # type: ignore[misc]

    # -- counting ---------------------------------------------------------------------------

    @functools.wraps(SMTP.smtp_RCPT)  # keeps aiosmtpd's HELP text for RCPT
    async def smtp_RCPT(self, arg: str | None) -> None:
        self._in_rcpt = True
        try:
            await super().smtp_RCPT(arg)  # type: ignore[misc]
        finally:
            self._in_rcpt = False

    async def push(self, status: str | bytes) -> None:
        if self._hung_up:
            return
        text = status if isinstance(status, str) else status.decode("utf-8", "replace")
        last = text.rpartition("\r\n")[2]
        counted = self._greeted and _final(last) and not last.startswith("3")
        if _final(last):
            self._arm("data" if last.startswith("354") else "idle")
        await super().push(status)  # type: ignore[misc]
        self._greeted = True
        if not counted:
            return
        self._commands += 1
        if self._in_rcpt and not last.startswith("2"):
            self._failed_recipients += 1
            if self._failed_recipients >= self.limits.max_failed_recipients:
                self._end(f"421 4.7.0 {self.hostname} too many refused recipients "
                          f"({self._failed_recipients}), closing connection")
                return
        if self._commands >= self.limits.max_commands:
            self._end(f"421 4.7.0 {self.hostname} too many commands ({self._commands}), "
                      "closing connection")

    def _end(self, reply: str) -> None:
        """Say goodbye and close: nothing the client sent after is acted upon."""
        self._hung_up = True
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        if self.transport is not None:
            _hang_up(self.transport, reply)
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()  # as aiosmtpd's QUIT does


def _hang_up(transport: asyncio.BaseTransport, reply: str) -> None:
    """Send ``reply`` and close; drop the connection after :data:`HANG_UP_GRACE` seconds
    if the reply is still not sent then (the client does not read)."""
    # uvloop's transports have the methods without subclassing asyncio's classes.
    transport = cast(asyncio.Transport, transport)
    transport.write(reply.encode("utf-8") + b"\r\n")
    transport.close()  # once the reply is written (uvloop writes at the end of a turn)
    asyncio.get_running_loop().call_later(HANG_UP_GRACE, transport.abort)  # no-op if closed
