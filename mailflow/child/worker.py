"""The relay's child process itself: ``python -m mailflow.child.worker FD``.

It runs what :class:`~mailflow.child.messages.ChildConfig` asks for: egresses by name,
and the listeners on the sockets the relay passed.  Everything else it is told comes
over the socketpair ``FD`` (:mod:`mailflow.child.channel`) and is dispatched in
:meth:`_Child.on_message`.  It imports no store and no settings, so it stays small.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from mailflow.child.channel import Channel
from mailflow.child.listeners import RemoteAcceptor, open_listeners
from mailflow.child.messages import (
    Accepted,
    AcceptedEach,
    ChildConfig,
    Close,
    CloseListeners,
    EgressSpec,
    Forget,
    ListenersClosed,
    ListenerSpec,
    Ready,
    RecipientChecked,
    Refused,
    ReloadTls,
    Replies,
    Send,
    SmtpEgressSpec,
    StartFailed,
    TlsReloaded,
    ToChild,
    ToRelay,
    Unavailable,
)
from mailflow.egress.smtp import SmtpEgress
from mailflow.errors import ConfigurationError, EgressUnavailable
from mailflow.ingress.limits import raise_open_files_limit
from mailflow.ingress.smtp import Listener
from mailflow.ingress.tls import ServerTls
from mailflow.logs import configure_logging
from mailflow.memory import release_large_blocks

log = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0  # seconds for transactions under way to finish once told to stop

ChildChannel = Channel[ToRelay, ToChild]


def build_egress(spec: EgressSpec) -> SmtpEgress:
    """The egress a spec describes (one case per provider the child can run)."""
    match spec:
        case SmtpEgressSpec():
            return SmtpEgress(spec.relay, pool_size=spec.pool_size, timeout=spec.timeout,
                              idle_check=spec.idle_check, local_hostname=spec.local_hostname,
                              transaction_timeout=spec.transaction_timeout,
                              payload_cache=spec.payload_cache)
    raise ValueError(f"the child cannot run {type(spec).__name__}")  # pragma: no cover


class _Child:
    def __init__(self) -> None:
        self.egresses: dict[str, SmtpEgress] = {}
        self.contents: dict[int, bytes] = {}
        self.channel: ChildChannel | None = None
        self.done = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.acceptor: RemoteAcceptor | None = None   # with listeners: asks the relay
        self.listeners: list[Listener] = []
        self.tls: ServerTls | None = None             # STARTTLS on the SMTP sockets

    def on_message(self, message: ToChild) -> None:
        """The child's one dispatcher of what the relay says."""
        match message:
            case Send(content_key=key, content=content):
                if content is None:
                    content = self.contents.get(key)
                elif key:
                    self.contents[key] = content
                self._spawn(self._send(message, content))
            case Forget(content_keys=keys):
                for key in keys:
                    self.contents.pop(key, None)
            case RecipientChecked() | Accepted() | AcceptedEach() | Refused():
                if self.acceptor is not None:
                    self.acceptor.answered(message)
            case ChildConfig():
                self._spawn(self._start(message))
            case CloseListeners(grace=grace):
                self._spawn(self._close_listeners(grace))
            case ReloadTls(number=number):
                self._spawn(self._reload_tls(number))
            case Close():
                self.done.set()
            case _:
                log.error("unexpected message from the relay: %s", type(message).__name__)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _start(self, config: ChildConfig) -> None:
        assert self.channel is not None
        try:
            self.egresses = {name: build_egress(spec) for name, spec in config.egresses.items()}
        except Exception as exc:  # else the relay waits START_TIMEOUT for a Ready
            self.channel.send(StartFailed(f"cannot build the egresses: {exc}"))
            return
        if config.listeners is not None and \
                not await self._open_listeners(config.listeners, config.log_level,
                                               config.log_format):
            return
        self.channel.send(Ready(os.getpid()))

    async def _open_listeners(self, spec: ListenerSpec, log_level: str,
                              log_format: str) -> bool:
        assert self.channel is not None
        configure_logging(log_level, log_format)
        try:
            if spec.tls is not None:
                self.tls = await ServerTls.load(Path(spec.tls.cert_file),
                                                Path(spec.tls.key_file), require=spec.tls.require)
            self.acceptor, self.listeners = await open_listeners(spec, self.channel, self.tls)
        except Exception as exc:
            self.channel.send(StartFailed(f"cannot serve the listeners: {exc}"))
            return False
        return True

    async def _reload_tls(self, number: int) -> None:
        assert self.channel is not None
        if self.tls is None:
            self.channel.send(TlsReloaded(number, None, "STARTTLS is not on"))
            return
        try:
            fingerprint = await self.tls.reload()
        except ConfigurationError as exc:
            self.channel.send(TlsReloaded(number, None, str(exc)))
        else:
            self.channel.send(TlsReloaded(number, fingerprint, None))

    async def _close_listeners(self, grace: float) -> None:
        listeners, self.listeners = self.listeners, []
        await asyncio.gather(*(listener.close(grace) for listener in listeners))
        if self.channel is not None:
            self.channel.send(ListenersClosed())

    async def _send(self, send: Send, content: bytes | None) -> None:
        assert self.channel is not None
        try:
            if content is None:
                raise EgressUnavailable(f"content {send.content_key} is not kept here")
            egress = self.egresses[send.egress]
            # Content key 0: the relay sent this content for this transaction alone.
            replies = await egress.send(send.mail_from, send.recipients, content,
                                        once=not send.content_key)
        except EgressUnavailable as exc:
            self.channel.send(Unavailable(send.number, str(exc)))
        except Exception as exc:  # never leave the relay waiting
            self.channel.send(Unavailable(send.number, f"{type(exc).__name__}: {exc}"))
        else:
            self.channel.send(Replies(send.number, tuple(replies)))

    def on_lost(self, exc: Exception | None) -> None:
        if self.acceptor is not None:
            self.acceptor.relay_gone()
        self.done.set()  # the relay went away: nothing more will come

    async def run(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(fileno=fd)
        self.channel = channel = ChildChannel(self.on_message, self.on_lost)
        await loop.create_unix_connection(lambda: channel, sock=sock)
        await self.done.wait()
        if self.listeners:
            await self._close_listeners(0.0)
        if self.tasks:  # transactions on the wire: let them finish and answer
            await asyncio.wait(list(self.tasks), timeout=STOP_TIMEOUT)
        await asyncio.gather(*(egress.close() for egress in self.egresses.values()))
        await asyncio.sleep(0)  # flush the last answers
        channel.close()


def main(argv: list[str]) -> int:
    # The relay handles signals and stops us with Close, or by going away (end of
    # file); a Ctrl-C or a service manager's SIGTERM to the whole group must not cut
    # transactions off half-way.  SIGHUP (a closed terminal, or an operator's reload
    # sent to the group) is the relay's too: it passes a reload on as ReloadTls.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    raise_open_files_limit()  # its sessions are the connections an attacker opens
    release_large_blocks()  # as the relay: contents' memory goes back when freed
    try:
        import uvloop
        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(_Child().run(int(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
