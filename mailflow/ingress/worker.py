"""The SMTP and LMTP sessions in the relay's child process, the decisions in the relay.

Why: under ingest load the relay's event loop spent about half its time in SMTP
sessions (aiosmtpd's command loop, reply writes, the sockets), and that thread shares
the GIL with the store's writer thread, so every group commit waited for it.  The relay
binds the listening sockets itself (a busy port is still a start-up error) and hands
them to its child process, the one that already runs the SMTP egress
(:class:`~mailflow.egress.worker.ProcessEgress`): one process for the wire work in
both directions, one interpreter's memory.

Every decision stays in the relay's :class:`~mailflow.services.accept.AcceptService`,
which the child asks over the frames (:mod:`mailflow.frames`): ``rcpt`` at RCPT
(positive answers are remembered for ``recipient_cache_ttl`` seconds in the child too)
and ``accept``/``accept_each`` after DATA, answered with the queue id (LMTP: the
verdicts) or the error to reply with.  A ``250`` still means the relay committed the
message.

Failure: if the child dies, its sessions are cut (clients retry, as after any dropped
connection) and a new child takes the same sockets over; connections made meanwhile
wait in the listen backlog.  If the relay goes away, the child answers what it still
holds with ``451 4.3.0``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import astuple
from typing import TYPE_CHECKING, Any

from mailflow import addresses
from mailflow.errors import SmtpReplyError, StorageUnavailable
from mailflow.frames import FrameProtocol
from mailflow.ingress.smtp import Listener, start_listener
from mailflow.model import Envelope, Verdict

if TYPE_CHECKING:  # the child imports this module: it keeps no store and no settings
    from mailflow.services.accept import AcceptService

log = logging.getLogger(__name__)

ASKS = frozenset({"rcpt", "accept", "accept_each"})  # frames the child sends about sessions
MAX_KNOWN = 10_000  # addresses the child remembers as existing


class HostedListeners:
    """The relay's listening sockets, served by its child; the child's questions answered.

    Has the :class:`~mailflow.ingress.smtp.Listener` interface (``close``).  The process
    that hosts them sets ``close_in_child``.
    """

    def __init__(self, service: AcceptService, sockets: list[tuple[socket.socket, bool]],
                 config: dict[str, Any]) -> None:
        self.service = service
        self.sockets = sockets          # (bound socket, is LMTP)
        self.config = config            # hostname, max_message_size, ttl, log level
        self.open = True                # False once closed: a new child must not reopen
        self.close_in_child: Callable[[float], Awaitable[None]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def child_config(self) -> dict[str, Any] | None:
        """What a new child needs to serve the sockets (None once closed); their file
        descriptors, to pass on, are in its ``listeners``."""
        if not self.open:
            return None
        return {**self.config, "listeners": [(sock.fileno(), lmtp)
                                             for sock, lmtp in self.sockets]}

    def answer(self, channel: FrameProtocol, frame: tuple[Any, ...]) -> None:
        task = asyncio.create_task(self._answer(channel, frame))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, channel: FrameProtocol, frame: tuple[Any, ...]) -> None:
        kind, number = frame[0], frame[1]
        try:
            if kind == "rcpt":
                # Only whether the child may remember the answer: a Resolution would
                # make the child import the store to unpickle it.
                resolution = await self.service.check_recipient(frame[2])
                answer: tuple[Any, ...] = ("ok", number, resolution.mailing_list is not None)
            elif kind == "accept":
                answer = ("ok", number, await self.service.accept(Envelope(*frame[2]),
                                                                  frame[3]))
            else:
                answer = ("ok", number, await self.service.accept_each(Envelope(*frame[2]),
                                                                       frame[3]))
        except SmtpReplyError as error:
            answer = ("error", number, error)
        except Exception:
            log.exception("accept failed", extra={"action": "accept_error"})
            answer = ("error", number, StorageUnavailable())
        channel.send(answer)

    async def close(self, grace: float = 5.0) -> None:
        """Stop listening; sessions get ``grace`` seconds to finish what they accept."""
        self.open = False
        if self.close_in_child is not None:
            await self.close_in_child(grace)
        if self._tasks:  # the last sessions' questions: answered, or nobody listens
            await asyncio.wait(list(self._tasks), timeout=grace)
        for sock, _ in self.sockets:
            sock.close()


# -- the child's half ----------------------------------------------------------------------

class RemoteAcceptor:
    """The accept service as the child sees it: each question is a frame to the relay."""

    def __init__(self, channel: FrameProtocol, recipient_cache_ttl: float) -> None:
        self.channel: FrameProtocol | None = channel
        self.ttl = recipient_cache_ttl
        self._known: dict[str, float] = {}  # address -> until when it is known to exist
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._next = 0

    async def check_recipient(self, address: str) -> object:
        """Raise unless the relay knows the address (asked at most every ``ttl`` s)."""
        canonical = addresses.canonical(address)
        now = time.monotonic()
        if self._known.get(canonical, 0.0) > now:
            return True
        if await self._ask("rcpt", address) and self.ttl > 0:
            if len(self._known) >= MAX_KNOWN:
                self._known.clear()
            self._known[canonical] = now + self.ttl
        return True

    async def accept(self, envelope: Envelope, raw: bytes) -> str:
        return await self._ask("accept", astuple(envelope), raw)  # type: ignore[no-any-return]

    async def accept_each(self, envelope: Envelope, raw: bytes) -> list[Verdict]:
        return await self._ask("accept_each", astuple(envelope), raw)  # type: ignore[no-any-return]

    async def _ask(self, kind: str, *args: Any) -> Any:
        if self.channel is None:
            raise StorageUnavailable("the relay is stopping, try again later")
        self._next += 1
        number = self._next
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[number] = future
        self.channel.send((kind, number, *args))
        try:
            return await future
        finally:
            self._waiting.pop(number, None)

    def on_frame(self, frame: tuple[Any, ...]) -> None:
        kind, number, detail = frame
        future = self._waiting.get(number)
        if future is None or future.done():
            return
        if kind == "ok":
            future.set_result(detail)
        else:
            future.set_exception(detail)

    def relay_gone(self) -> None:
        self.channel = None
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(StorageUnavailable(
                    "the relay went away before the message was stored, try again later"))


async def open_listeners(config: dict[str, Any], channel: FrameProtocol
                         ) -> tuple[RemoteAcceptor, list[Listener]]:
    """In the child: serve the sockets the relay passed, asking it over ``channel``."""
    acceptor = RemoteAcceptor(channel, config["recipient_cache_ttl"])
    listeners = [await start_listener(acceptor, None, hostname=config["hostname"],
                                      max_message_size=config["max_message_size"],
                                      lmtp=lmtp, sock=socket.socket(fileno=fd))
                 for fd, lmtp in config["listeners"]]
    return acceptor, listeners
