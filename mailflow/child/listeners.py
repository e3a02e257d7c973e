"""The SMTP and LMTP sessions in the relay's child process, the decisions in the relay.

Why: under ingest load the relay's event loop spent much of its time in SMTP
sessions (aiosmtpd's command loop, reply writes, the sockets), and that thread shares
the GIL with the store's writer thread, so every group commit waited for it.  The relay
binds the listening sockets itself (a busy port is still a start-up error) and hands
them to its child process (:class:`~mailflow.child.process.ChildProcess`), whatever
egress runs: one process for the wire work in both directions, one interpreter's memory.

Every decision stays in the relay's :class:`~mailflow.services.accept.AcceptService`,
which the child asks (:mod:`mailflow.child.messages`): :class:`CheckRecipient` at RCPT
(positive answers are remembered for ``recipient_cache_ttl`` seconds in the child too: for
every sender while the relay has no sender entries, else for that sender only) and
:class:`Accept`/:class:`AcceptEach` after DATA, answered with the queue id (LMTP: the
verdicts) or the error to reply with.  A ``250`` still means the relay committed
the message.

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
from typing import TYPE_CHECKING, Protocol

from mailflow import addresses
from mailflow.child.messages import (
    Accept,
    AcceptEach,
    Accepted,
    AcceptedEach,
    Answer,
    CheckRecipient,
    Failure,
    ListenerSpec,
    ListenSocket,
    Question,
    RecipientChecked,
    RecipientVerdict,
    Refused,
    TlsSpec,
)
from mailflow.errors import SmtpReplyError, StorageUnavailable
from mailflow.ingress.limits import SessionLimits
from mailflow.ingress.smtp import Listener, start_listener
from mailflow.ingress.tls import ServerTls
from mailflow.model import Envelope, Verdict

if TYPE_CHECKING:  # the child imports this module: it keeps no store and no settings
    from mailflow.services.accept import AcceptService

log = logging.getLogger(__name__)

MAX_KNOWN = 10_000  # addresses the child remembers as existing

class AnswerSink(Protocol):
    def send(self, message: Answer) -> None: ...


class HostedListeners:
    """The relay's listening sockets, served by its child; the child's questions answered.

    Has the :class:`~mailflow.ingress.smtp.Listener` interface (``close``).  The child
    process that hosts them sets ``close_in_child``.
    """

    def __init__(self, service: AcceptService, sockets: list[tuple[socket.socket, bool]], *,
                 hostname: str, max_message_size: int, recipient_cache_ttl: float,
                 limits: SessionLimits, tls: TlsSpec | None = None) -> None:
        self.service = service
        self.sockets = sockets          # (bound socket, is LMTP)
        self.hostname = hostname
        self.max_message_size = max_message_size
        self.recipient_cache_ttl = recipient_cache_ttl
        self.limits = limits
        self.tls = tls
        self.open = True                # False once closed: a new child must not reopen
        self.close_in_child: Callable[[float], Awaitable[None]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def spec(self) -> ListenerSpec | None:
        """What a new child needs to serve the sockets (None once closed)."""
        if not self.open:
            return None
        return ListenerSpec(tuple(ListenSocket(sock.fileno(), lmtp) for sock, lmtp in self.sockets),
                            self.hostname, self.max_message_size, self.recipient_cache_ttl,
                            self.limits, self.tls)

    def answer(self, channel: AnswerSink, question: Question) -> None:
        task = asyncio.create_task(self._answer(channel, question))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, channel: AnswerSink, question: Question) -> None:
        answer: Answer
        try:
            match question:
                case CheckRecipient(number=number, address=address, sender=sender):
                    resolution = await self.service.check_recipient(address, sender)
                    answer = RecipientChecked(number, resolution.mailing_list is not None,
                                              self.service.answers_for_every_sender(
                                                  resolution))
                case Accept(number=number, envelope=envelope, raw=raw):
                    answer = Accepted(number, await self.service.accept(envelope, raw))
                case AcceptEach(number=number, envelope=envelope, raw=raw):
                    verdicts = await self.service.accept_each(envelope, raw)
                    answer = AcceptedEach(number, tuple(map(RecipientVerdict.of, verdicts)))
        except SmtpReplyError as error:
            answer = Refused(question.number, Failure.of(error))
        except Exception:
            log.exception("accept failed", extra={"action": "accept_error"})
            answer = Refused(question.number, Failure.of(StorageUnavailable()))
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

class QuestionSink(Protocol):
    def send(self, message: Question) -> None: ...


class RemoteAcceptor:
    """The accept service as the child sees it: each question a message to the relay."""

    def __init__(self, channel: QuestionSink, recipient_cache_ttl: float) -> None:
        self.channel: QuestionSink | None = channel
        self.ttl = recipient_cache_ttl
        self._known: dict[str, float] = {}  # address -> until when it is known to exist
        # (sender, address) -> until when that sender may write to it (entries exist)
        self._known_for: dict[tuple[str, str], float] = {}
        self._waiting: dict[int, asyncio.Future[Answer]] = {}
        self._next = 0

    async def check_recipient(self, address: str, sender: str) -> object:
        """Raise unless the relay knows the address and takes ``sender``'s mail for it
        (asked at most every ``ttl`` s for one recipient, or one sender and recipient)."""
        canonical = addresses.canonical(address)
        now = time.monotonic()
        if self._known.get(canonical, 0.0) > now:
            return True
        pair = (addresses.canonical(sender), canonical)
        if self._known_for.get(pair, 0.0) > now:
            return True
        answer = await self._ask(lambda number: CheckRecipient(number, address, sender))
        assert isinstance(answer, RecipientChecked)
        if answer.known and self.ttl > 0:
            if answer.any_sender:
                if len(self._known) >= MAX_KNOWN:
                    self._known.clear()
                self._known[canonical] = now + self.ttl
            else:
                # Sender entries exist now: an answer remembered for every sender
                # might pass one of them.
                self._known.clear()
                if len(self._known_for) >= MAX_KNOWN:
                    self._known_for.clear()
                self._known_for[pair] = now + self.ttl
        return True

    async def accept(self, envelope: Envelope, raw: bytes) -> str:
        answer = await self._ask(lambda number: Accept(number, envelope, raw))
        assert isinstance(answer, Accepted)
        return answer.message_id

    async def accept_each(self, envelope: Envelope, raw: bytes) -> list[Verdict]:
        answer = await self._ask(lambda number: AcceptEach(number, envelope, raw))
        assert isinstance(answer, AcceptedEach)
        return [verdict.verdict() for verdict in answer.verdicts]

    async def _ask(self, question: Callable[[int], Question]) -> Answer:
        """The relay's answer; a :class:`Refused` is raised as its error."""
        if self.channel is None:
            raise StorageUnavailable("the relay is stopping, try again later")
        self._next += 1
        number = self._next
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting[number] = future
        self.channel.send(question(number))
        try:
            answer = await future
        finally:
            self._waiting.pop(number, None)
        if isinstance(answer, Refused):
            raise answer.failure.error()
        return answer

    def answered(self, answer: Answer) -> None:
        future = self._waiting.get(answer.number)
        if future is not None and not future.done():
            future.set_result(answer)

    def relay_gone(self) -> None:
        self.channel = None
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(StorageUnavailable(
                    "the relay went away before the message was stored, try again later"))


async def open_listeners(spec: ListenerSpec, channel: QuestionSink,
                         tls: ServerTls | None = None) -> tuple[RemoteAcceptor, list[Listener]]:
    """In the child: serve the sockets the relay passed, asking it over ``channel``;
    the SMTP ones offer STARTTLS with ``tls`` (loaded from ``spec.tls``)."""
    acceptor = RemoteAcceptor(channel, spec.recipient_cache_ttl)
    listeners = [await start_listener(acceptor, None, hostname=spec.hostname,
                                      max_message_size=spec.max_message_size,
                                      lmtp=sock.lmtp, sock=socket.socket(fileno=sock.fd),
                                      limits=spec.limits,
                                      tls=None if sock.lmtp else tls)
                 for sock in spec.sockets]
    return acceptor, listeners
