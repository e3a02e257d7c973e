"""The relay's child process, as the relay sees it: started, replaced, stopped.

Why a child: the relay is one Python process, so the GIL caps it at one core.  The child
takes the wire work in both directions: the SMTP conversations of egresses (by name,
from :class:`~mailflow.child.messages.ChildConfig`) and the SMTP/LMTP sessions of the
relay's listening sockets (:mod:`mailflow.child.listeners`).  The two are independent:
the sessions move into the child whatever egress the relay runs.  The scheduler, the
store and every decision stay in the relay.

The two talk over a socketpair (:mod:`mailflow.child.channel`).  A content is sent once
and then referred to by number while the child keeps it; the relay decides what the
child keeps (:mod:`mailflow.child.contents`) and tells it what to forget.

Failure: if the child dies, every transaction it held is answered
:class:`~mailflow.errors.EgressUnavailable` (so the deliveries are deferred and retried,
never lost) and the next send starts a new child; one that served listeners is replaced
at once (after ``RESTART_DELAY``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Sequence

from mailflow.child.channel import Channel
from mailflow.child.contents import ChildContents
from mailflow.child.listeners import HostedListeners
from mailflow.child.messages import (
    Accept,
    AcceptEach,
    CheckRecipient,
    ChildConfig,
    Close,
    CloseListeners,
    EgressSpec,
    Forget,
    ListenersClosed,
    Ready,
    ReloadTls,
    Replies,
    Send,
    StartFailed,
    TlsReloaded,
    ToChild,
    ToRelay,
    Unavailable,
)
from mailflow.errors import ConfigurationError, EgressUnavailable
from mailflow.memory import DEFAULT_BUDGET
from mailflow.model import RecipientReply

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0     # seconds for a child to start and say it is ready
STOP_TIMEOUT = 10.0      # seconds for a child to close its connections and exit
RELOAD_TIMEOUT = 10.0    # seconds for a child to read its certificate files again
RESTART_DELAY = 1.0      # seconds before a child that served listeners is replaced

RelayChannel = Channel[ToChild, ToRelay]


class ChildProcess:
    """One child process hosting egresses (by name) and, optionally, the listeners."""

    def __init__(self, *, log_level: str = "INFO", log_format: str = "text",
                 contents_cache: int = DEFAULT_BUDGET.child_contents) -> None:
        """``contents_cache``: bytes of contents the child keeps between transactions."""
        self.log_level = log_level
        self.log_format = log_format
        self.egresses: dict[str, EgressSpec] = {}
        self.listeners: HostedListeners | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.children_started = 0
        self._channel: RelayChannel | None = None
        self._contents = ChildContents(contents_cache)
        self._pending: dict[int, asyncio.Future[list[RecipientReply]]] = {}
        self._next = 0
        self._starting: asyncio.Lock | None = None
        self._ready: asyncio.Future[None] | None = None
        self._listeners_closed: asyncio.Future[None] | None = None
        self._reloads: dict[int, asyncio.Future[str | None]] = {}
        self._watch: asyncio.Task[None] | None = None

    # -- what it hosts (before start) ---------------------------------------------------

    def add_egress(self, name: str, spec: EgressSpec) -> None:
        self.egresses[name] = spec

    def host_listeners(self, listeners: HostedListeners) -> None:
        """Serve the relay's SMTP/LMTP sockets in the child (before :meth:`start`)."""
        self.listeners = listeners
        listeners.close_in_child = self.close_listeners

    @property
    def needed(self) -> bool:
        return bool(self.egresses) or self.listeners is not None

    # -- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the child now, so the first delivery does not wait for it.

        Without listeners, if it cannot start, the relay still starts: each send tries
        again (and defers on failure).  With listeners it must start (else nobody
        answers SMTP), and a child that dies is replaced at once, not at the next send.
        """
        if self.listeners is not None:
            await self._ensure_child()
            self._watch = asyncio.create_task(self._keep_child(), name="child-process")
            return
        try:
            await self._ensure_child()
        except (EgressUnavailable, OSError) as exc:
            log.error("the relay's child process did not start: %s", exc,
                      extra={"action": "egress_lost"})

    async def _keep_child(self) -> None:
        while self.listeners is not None and self.listeners.open:
            process = self.process
            assert process is not None
            status = await process.wait()
            if not self.listeners.open:
                return
            log.error("the relay's child process exited (status %s); starting another",
                      status, extra={"action": "egress_lost"})
            await asyncio.sleep(RESTART_DELAY)
            try:
                if self.process is process:
                    await self._ensure_child()
            except (EgressUnavailable, OSError) as exc:
                log.error("cannot start the relay's child process: %s", exc,
                          extra={"action": "egress_lost"})

    async def close_listeners(self, grace: float) -> None:
        """The child stops listening and finishes its sessions (the egresses go on)."""
        await self._stop_watching()
        channel = self._channel
        if channel is None:
            return
        self._listeners_closed = asyncio.get_running_loop().create_future()
        channel.send(CloseListeners(grace))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listeners_closed, grace + STOP_TIMEOUT)

    async def reload_tls(self) -> str | None:
        """The child reads its certificate files again; returns the fingerprint it
        serves now, or None without a child (the next one reads the files when it
        starts, as after a child lost during the reload).  A certificate that does not
        load raises ConfigurationError, and the child keeps serving the old one."""
        channel = self._channel
        if channel is None:
            return None
        self._next += 1
        number = self._next
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._reloads[number] = future
        channel.send(ReloadTls(number))
        try:
            return await asyncio.wait_for(future, RELOAD_TIMEOUT)
        except TimeoutError:
            raise ConfigurationError("the relay's child process did not answer the reload "
                                     f"within {RELOAD_TIMEOUT:g} s") from None
        finally:
            self._reloads.pop(number, None)

    async def _stop_watching(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None

    async def stop(self) -> None:
        """Let the child finish what it holds and exit (killed after ``STOP_TIMEOUT``)."""
        await self._stop_watching()
        channel, process = self._channel, self.process
        if channel is not None:
            channel.send(Close())
        if process is not None and process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                process.kill()
                await process.wait()
        if channel is not None:
            channel.close()

    # -- egress -------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether transactions are under way in the child."""
        return bool(self._pending)

    async def send(self, egress: str, mail_from: str, recipients: Sequence[str],
                   content: bytes) -> list[RecipientReply]:
        """One transaction through the child's egress ``egress``."""
        channel = await self._ensure_child()
        self._next += 1
        number = self._next
        future: asyncio.Future[list[RecipientReply]] = \
            asyncio.get_running_loop().create_future()
        self._pending[number] = future
        key, with_content, forget = self._contents.place(content)
        if forget:
            channel.send(Forget(tuple(forget)))
        channel.send(Send(number, egress, key, content if with_content else None, mail_from,
                          tuple(recipients)))
        return await future

    # -- the child ----------------------------------------------------------------------

    async def _ensure_child(self) -> RelayChannel:
        if self._channel is not None:
            return self._channel
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._channel is None:
                await self._start_child()
        assert self._channel is not None
        return self._channel

    async def _start_child(self) -> None:
        loop = asyncio.get_running_loop()
        parent_end, child_end = socket.socketpair()
        listeners = self.listeners.spec() if self.listeners is not None else None
        fds = (child_end.fileno(), *(sock.fd for sock in (listeners.sockets if listeners else ())))
        try:
            self.process = process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mailflow.child.worker", str(child_end.fileno()),
                pass_fds=fds, stdin=asyncio.subprocess.DEVNULL)
        except OSError as exc:
            parent_end.close()
            raise EgressUnavailable(f"cannot start the relay's child process: {exc}") from exc
        finally:
            child_end.close()
        self._ready = ready = loop.create_future()
        # Bound to this channel: questions may arrive with Ready, before it is current.
        channel: RelayChannel = RelayChannel(lambda message: self._on_message(channel, message),
                                             lambda exc: self._on_lost(channel, exc))
        await loop.create_unix_connection(lambda: channel, sock=parent_end)
        channel.send(ChildConfig(dict(self.egresses), listeners, self.log_level,
                                 self.log_format))
        try:
            await asyncio.wait_for(ready, START_TIMEOUT)
        except BaseException as exc:
            channel.close()
            if process.returncode is None:
                process.kill()
            if isinstance(exc, TimeoutError):
                raise EgressUnavailable("the relay's child process did not start in time") \
                    from exc
            raise
        self._channel = channel
        self._contents.clear()
        self.children_started += 1
        log.info("child process %d started", process.pid, extra={"action": "egress_started"})

    def _on_message(self, channel: RelayChannel, message: ToRelay) -> None:
        """The relay's one dispatcher of what the child says."""
        match message:
            case CheckRecipient() | Accept() | AcceptEach():
                if self.listeners is not None:
                    self.listeners.answer(channel, message)
            case Replies(number=number, replies=replies):
                future = self._pending.pop(number, None)
                if future is not None and not future.done():
                    future.set_result(list(replies))
            case Unavailable(number=number, reason=reason):
                future = self._pending.pop(number, None)
                if future is not None and not future.done():
                    future.set_exception(EgressUnavailable(reason))
            case Ready():
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(None)
            case StartFailed(reason=reason):
                if self._ready is not None and not self._ready.done():
                    self._ready.set_exception(EgressUnavailable(reason))
            case ListenersClosed():
                if self._listeners_closed is not None and not self._listeners_closed.done():
                    self._listeners_closed.set_result(None)
            case TlsReloaded(number=number, fingerprint=fingerprint, error=error):
                reload = self._reloads.get(number)
                if reload is not None and not reload.done():
                    if fingerprint is None:
                        reload.set_exception(ConfigurationError(error or "no certificate"))
                    else:
                        reload.set_result(fingerprint)
            case _:
                log.error("unexpected message from the child: %s", type(message).__name__,
                          extra={"action": "child_protocol_error"})

    def _on_lost(self, channel: RelayChannel, exc: Exception | None) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(EgressUnavailable(
                "the relay's child process exited at start"))
        if self._listeners_closed is not None and not self._listeners_closed.done():
            self._listeners_closed.set_result(None)
        if self._channel is not channel:
            return  # one that never became current: it held nothing
        self._channel = None
        for reload in self._reloads.values():  # the next child reads the files at start
            if not reload.done():
                reload.set_result(None)
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(EgressUnavailable(
                    f"the relay's child process exited ({exc or 'connection closed'})"))
        if pending:
            log.error("the relay's child process exited with %d transactions in flight",
                      len(pending), extra={"action": "egress_lost"})
