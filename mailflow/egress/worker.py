"""The relay's child process: the SMTP egress, and the listeners it may host.

Why: the relay is one Python process, so the GIL caps it at one core, and a fan-out
spends much of that core on SMTP client work (formatting commands, parsing replies,
the event loop around them).  :class:`ProcessEgress` keeps the scheduler, the store and
every decision in the relay process and hands each transaction to a child running
:class:`~mailflow.egress.smtp.SmtpEgress`; the child answers per recipient.  The same
child serves the relay's SMTP/LMTP sockets when the relay hands them over
(:meth:`ProcessEgress.host_listeners`, :mod:`mailflow.ingress.worker`): one process for
the wire work in both directions, one interpreter's memory (~25 MB) instead of two.

The two talk over a socketpair in frames (:mod:`mailflow.frames`).  A content is sent
once and then referred to by number while the child keeps it (the parent decides what
it forgets).

Failure: if the child dies, every transaction it held is answered
:class:`~mailflow.errors.EgressUnavailable` (so the deliveries are deferred and retried,
never lost) and the next send starts a new child; one that served listeners is replaced
at once (after ``RESTART_DELAY``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from mailflow.egress.base import PerContent, RecipientReply
from mailflow.egress.smtp import SmtpEgress
from mailflow.errors import EgressUnavailable
from mailflow.frames import FrameProtocol
from mailflow.ingress.smtp import Listener
from mailflow.ingress.worker import ASKS, HostedListeners, RemoteAcceptor, open_listeners
from mailflow.smtp_relay import SmtpRelay

log = logging.getLogger(__name__)

CONTENTS_KEPT = 64       # contents the child keeps (the scheduler renders 64 copies at most)
START_TIMEOUT = 30.0     # seconds for a child to start and say it is ready
STOP_TIMEOUT = 10.0      # seconds for a child to close its connections and exit
QUIET_BEFORE_ALONE = 0.02  # seconds without a send before one goes in-process again
RESTART_DELAY = 1.0      # seconds before a child that served listeners is replaced


class ProcessEgress:
    """The :class:`~mailflow.egress.base.Egress` protocol, served by a child process."""

    name = "smtp"

    def __init__(self, relay: SmtpRelay, *, pool_size: int, timeout: float,
                 idle_check: float, local_hostname: str | None = None,
                 alone_in_process: bool = True) -> None:
        # A transaction that finds nothing else under way, after 20 ms without a send,
        # is sent from this process: at idle the child's CPU is asleep, and waking it
        # costs about a millisecond of latency.  Under load everything goes to the
        # child, lone transactions included (ingest load A: a send every millisecond or
        # so, each alone, had half of them on the relay's busy event loop).
        self._alone = SmtpEgress(relay, pool_size=1, timeout=timeout, idle_check=idle_check,
                                 local_hostname=local_hostname) if alone_in_process else None
        self._alone_busy = False
        self._last_send = -QUIET_BEFORE_ALONE
        self.config = {"relay": asdict(relay), "pool_size": pool_size, "timeout": timeout,
                       "idle_check": idle_check, "local_hostname": local_hostname}
        self._process: asyncio.subprocess.Process | None = None
        self._channel: FrameProtocol | None = None
        self._pending: dict[int, asyncio.Future[list[RecipientReply]]] = {}
        self._contents: PerContent[int] = PerContent(CONTENTS_KEPT)  # content -> its number
        self._next_id = 0
        self._starting: asyncio.Lock | None = None
        self.children_started = 0
        self.listeners: HostedListeners | None = None
        self._listeners_closed: asyncio.Future[None] | None = None
        self._watch: asyncio.Task[None] | None = None

    def host_listeners(self, listeners: HostedListeners) -> None:
        """Serve the relay's SMTP/LMTP sockets in the child too (before :meth:`start`)."""
        self.listeners = listeners
        listeners.close_in_child = self._close_listeners

    async def start(self) -> None:
        """Start the child now, so the first delivery does not wait for it.

        Without listeners, if it cannot start, the relay still starts: each send tries
        again (and defers on failure).  With listeners it must start (else nobody
        answers SMTP), and a child that dies is replaced at once, not at the next send.
        """
        if self.listeners is not None:
            await self._ensure_child()
            self._watch = asyncio.create_task(self._keep_child(), name="egress-process")
            return
        try:
            await self._ensure_child()
        except (EgressUnavailable, OSError) as exc:
            log.error("egress process did not start: %s", exc, extra={"action": "egress_lost"})

    async def _keep_child(self) -> None:
        while self.listeners is not None and self.listeners.open:
            process = self._process
            assert process is not None
            status = await process.wait()
            if not self.listeners.open:
                return
            log.error("the relay's child process exited (status %s); starting another",
                      status, extra={"action": "egress_lost"})
            await asyncio.sleep(RESTART_DELAY)
            try:
                if self._process is process:
                    await self._ensure_child()
            except (EgressUnavailable, OSError) as exc:
                log.error("cannot start the relay's child process: %s", exc,
                          extra={"action": "egress_lost"})

    async def _close_listeners(self, grace: float) -> None:
        """The child stops listening and finishes its sessions (the egress goes on)."""
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        channel = self._channel
        if channel is None:
            return
        self._listeners_closed = asyncio.get_running_loop().create_future()
        channel.send(("close_listeners", grace))
        with contextlib.suppress(TimeoutError, EgressUnavailable):
            await asyncio.wait_for(self._listeners_closed, grace + STOP_TIMEOUT)

    async def send(self, mail_from: str, recipients: Sequence[str],
                   content: bytes) -> list[RecipientReply]:
        now = asyncio.get_running_loop().time()
        quiet, self._last_send = now - self._last_send >= QUIET_BEFORE_ALONE, now
        if self._alone is not None and quiet and not self._alone_busy and not self._pending:
            self._alone_busy = True
            try:
                return await self._alone.send(mail_from, recipients, content)
            finally:
                self._alone_busy = False
        channel = await self._ensure_child()
        self._next_id += 1
        number = self._next_id
        future: asyncio.Future[list[RecipientReply]] = \
            asyncio.get_running_loop().create_future()
        self._pending[number] = future
        key, first_time = self._content_key(content, channel)
        channel.send(("send", number, key, content if first_time else None, mail_from,
                      list(recipients)))
        return await future

    def _content_key(self, content: bytes, channel: FrameProtocol) -> tuple[int, bool]:
        """The number the child knows ``content`` by, and whether it must be sent now."""
        key = self._contents.get(content)
        if key is not None:
            return key, False
        self._next_id += 1
        for forgotten in self._contents.put(content, self._next_id):
            channel.send(("forget", forgotten))
        return self._next_id, True

    async def _ensure_child(self) -> FrameProtocol:
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
        listeners = self.listeners
        listen_config = listeners.child_config() if listeners is not None else None
        fds = (child_end.fileno(),
               *(fd for fd, _ in (listen_config["listeners"] if listen_config else ())))
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mailflow.egress.worker", str(child_end.fileno()),
                pass_fds=fds, stdin=asyncio.subprocess.DEVNULL)
        except OSError as exc:
            parent_end.close()
            raise EgressUnavailable(f"cannot start the egress process: {exc}") from exc
        finally:
            child_end.close()
        ready: asyncio.Future[None] = loop.create_future()

        def on_frame(frame: Any) -> None:
            kind = frame[0]
            if kind in ASKS:
                assert listeners is not None
                listeners.answer(channel, frame)
            elif kind == "ready":
                if not ready.done():
                    ready.set_result(None)
            elif kind == "failed":
                if not ready.done():
                    ready.set_exception(EgressUnavailable(frame[1]))
            elif kind == "listeners_closed":
                if self._listeners_closed is not None and not self._listeners_closed.done():
                    self._listeners_closed.set_result(None)
            else:
                self._answer(frame)

        def on_lost(exc: Exception | None) -> None:
            if not ready.done():
                ready.set_exception(EgressUnavailable("the egress process exited at start"))
            if self._listeners_closed is not None and not self._listeners_closed.done():
                self._listeners_closed.set_result(None)
            self._child_gone(exc)

        _, channel = await loop.create_unix_connection(
            lambda: FrameProtocol(on_frame, on_lost), sock=parent_end)
        channel.send(("config", {**self.config, "listen": listen_config}))
        try:
            await asyncio.wait_for(ready, START_TIMEOUT)
        except BaseException as exc:
            channel.transport.close()  # type: ignore[union-attr]
            if self._process.returncode is None:
                self._process.kill()
            if isinstance(exc, TimeoutError):
                raise EgressUnavailable("the egress process did not start in time") from exc
            raise
        self._channel = channel
        self._contents.clear()
        self.children_started += 1
        log.info("egress process %d started", self._process.pid,
                 extra={"action": "egress_started"})

    def _answer(self, frame: tuple[Any, ...]) -> None:
        kind, number, detail = frame
        future = self._pending.pop(number, None)
        if future is None or future.done():
            return
        if kind == "replies":
            future.set_result([RecipientReply(*reply) for reply in detail])
        else:
            future.set_exception(EgressUnavailable(detail))

    def _child_gone(self, exc: Exception | None) -> None:
        self._channel = None
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(EgressUnavailable(
                    f"the egress process exited ({exc or 'connection closed'})"))
        if pending:
            log.error("egress process exited with %d transactions in flight", len(pending),
                      extra={"action": "egress_lost"})

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        if self._alone is not None:
            await self._alone.close()
        channel, process = self._channel, self._process
        if channel is not None:
            channel.send(("close",))
        if process is not None:
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                process.kill()
                await process.wait()
        if channel is not None and channel.transport is not None:
            channel.transport.close()


# -- the child ----------------------------------------------------------------------------

class _Worker:
    def __init__(self) -> None:
        self.egress: SmtpEgress | None = None
        self.contents: dict[int, bytes] = {}
        self.channel: FrameProtocol | None = None
        self.done = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.acceptor: RemoteAcceptor | None = None   # with listeners: asks the relay
        self.listeners: list[Listener] = []

    def on_frame(self, frame: tuple[Any, ...]) -> None:
        kind = frame[0]
        if kind == "send":
            _, number, key, content, mail_from, recipients = frame
            if content is not None:
                self.contents[key] = content
            task = asyncio.create_task(self._send(number, self.contents[key], mail_from,
                                                  recipients))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif kind == "forget":
            self.contents.pop(frame[1], None)
        elif kind in ("ok", "error"):
            if self.acceptor is not None:
                self.acceptor.on_frame(frame)
        elif kind == "config":
            config = frame[1]
            self.egress = SmtpEgress(SmtpRelay(**config["relay"]),
                                     pool_size=config["pool_size"],
                                     timeout=config["timeout"],
                                     idle_check=config["idle_check"],
                                     local_hostname=config["local_hostname"])
            self._spawn(self._start(config["listen"]))
        elif kind == "close_listeners":
            self._spawn(self._close_listeners(frame[1]))
        elif kind == "close":
            self.done.set()

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _start(self, listen: dict[str, Any] | None) -> None:
        assert self.channel is not None
        if listen is not None:
            logging.basicConfig(level=listen["log_level"],
                                format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                                stream=sys.stderr)
            logging.getLogger("mail.log").setLevel(logging.WARNING)
            try:
                self.acceptor, self.listeners = await open_listeners(listen, self.channel)
            except Exception as exc:
                self.channel.send(("failed", f"cannot serve the listeners: {exc}"))
                return
        self.channel.send(("ready",))

    async def _close_listeners(self, grace: float) -> None:
        listeners, self.listeners = self.listeners, []
        await asyncio.gather(*(listener.close(grace) for listener in listeners))
        if self.channel is not None:
            self.channel.send(("listeners_closed",))

    async def _send(self, number: int, content: bytes, mail_from: str,
                    recipients: list[str]) -> None:
        assert self.egress is not None and self.channel is not None
        try:
            replies = await self.egress.send(mail_from, recipients, content)
        except EgressUnavailable as exc:
            self.channel.send(("unavailable", number, str(exc)))
        except Exception as exc:  # never leave the parent waiting
            self.channel.send(("unavailable", number, f"{type(exc).__name__}: {exc}"))
        else:
            self.channel.send(("replies", number,
                               [(r.recipient, r.code, r.text) for r in replies]))

    def on_lost(self, exc: Exception | None) -> None:
        if self.acceptor is not None:
            self.acceptor.relay_gone()
        self.done.set()  # the relay went away: nothing more will come

    async def run(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(fileno=fd)
        self.channel = channel = FrameProtocol(self.on_frame, self.on_lost)
        await loop.create_unix_connection(lambda: channel, sock=sock)
        await self.done.wait()
        if self.listeners:
            await self._close_listeners(0.0)
        if self.tasks:  # transactions on the wire: let them finish and answer
            await asyncio.wait(list(self.tasks), timeout=STOP_TIMEOUT)
        if self.egress is not None:
            await self.egress.close()
        await asyncio.sleep(0)  # flush the last answers
        if self.channel.transport is not None:
            self.channel.transport.close()


def main(argv: list[str]) -> int:
    # The relay handles signals and stops us with a "close" frame, or by going away (end
    # of file); a Ctrl-C or a service manager's SIGTERM to the whole group must not cut
    # transactions off half-way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        import uvloop
        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(_Worker().run(int(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
