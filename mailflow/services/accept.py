"""The accept service: the one place that decides whether a message is taken.

Every ingress (SMTP, LMTP, and the HTTP and cloud providers that follow) asks it the same
questions in the same order: does this recipient exist, is the message too large, is it
looping; then it makes the message durable and only then says yes.  Protocol adapters
translate its errors into their own replies and hold no rules of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from mailflow import addresses, headers
from mailflow.clock import Clock
from mailflow.errors import (
    MessageTooLarge,
    NoRecipients,
    SmtpReplyError,
    StorageUnavailable,
    UnknownDomain,
    UnknownRecipient,
)
from mailflow.ids import new_message_id
from mailflow.metrics import MESSAGES_ACCEPTED, MESSAGES_REJECTED
from mailflow.model import Envelope, InboundMessage, Resolution, Verdict
from mailflow.pipeline.loops import check_hops, check_not_looping
from mailflow.pipeline.parse import check_well_formed, without_mbox_from
from mailflow.services.commit import GroupCommitter, content_digest
from mailflow.services.known_recipients import KnownRecipients
from mailflow.store.runner import StoreRunner

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AcceptPolicy:
    instance_id: str
    max_message_size: int
    max_received_headers: int
    recipient_cache_ttl: float = 2.0


class AcceptService:
    def __init__(self, runner: StoreRunner, committer: GroupCommitter, clock: Clock,
                 policy: AcceptPolicy) -> None:
        self.runner = runner
        self.committer = committer
        self.clock = clock
        self.policy = policy
        self.known = KnownRecipients(clock, policy.recipient_cache_ttl)

    async def check_recipient(self, address: str, *, count: bool = True) -> Resolution:
        """Raise unless ``address`` is a list, an alias or a list's bounce address here.

        ``count=False`` for questions that are not refusals (the policy service asks about
        every recipient its Postfix sees, ours or not).
        """
        canonical = addresses.canonical(address)
        resolution = self.known.get(canonical)
        if resolution is not None:
            return resolution
        try:
            resolution = await self.runner.read(self.runner.repo.resolve, canonical)
        except Exception as exc:
            log.exception("recipient lookup failed", extra={"action": "lookup_failed"})
            raise StorageUnavailable("cannot look up recipients right now, try again later") \
                from exc
        self.known.remember(canonical, resolution)
        if resolution.kind == "unknown_domain":
            if count:
                MESSAGES_REJECTED.labels(code=UnknownDomain.enhanced).inc()
            raise UnknownDomain(f"relaying denied: <{address}> is not in a domain of this relay")
        if resolution.kind == "unknown_address":
            if count:
                MESSAGES_REJECTED.labels(code=UnknownRecipient.enhanced).inc()
            raise UnknownRecipient(f"no list or alias <{address}> here")
        return resolution

    async def submit(self, envelope: Envelope, raw: bytes) -> str:
        """Check a whole submission, then accept it: for ingresses without RCPT (HTTP, pipe).

        The same checks, in the same order, as an SMTP conversation: recipients, size,
        well-formedness, loops; all or nothing.
        """
        if not envelope.rcpt_tos:
            raise NoRecipients("no recipient given")
        raw = without_mbox_from(raw)
        self.check_size(len(raw))
        check_well_formed(raw)
        for rcpt in envelope.rcpt_tos:
            await self.check_recipient(rcpt)
        return await self.accept(envelope, raw)

    def check_size(self, size: int) -> None:
        if size > self.policy.max_message_size:
            raise MessageTooLarge(
                f"message too large ({size} bytes, limit {self.policy.max_message_size})")

    async def accept(self, envelope: Envelope, raw: bytes) -> str:
        """Store a message for every recipient or for none (SMTP semantics)."""
        rcpts = [addresses.canonical(r) for r in envelope.rcpt_tos]
        for error in self.refusals(rcpts, raw).values():
            if error is not None:
                raise error
        return await self._store(envelope, rcpts, raw)

    async def accept_each(self, envelope: Envelope, raw: bytes) -> list[Verdict]:
        """Decide per recipient and store one message for those accepted (LMTP semantics)."""
        rcpts = [addresses.canonical(r) for r in envelope.rcpt_tos]
        refused = self.refusals(rcpts, raw)
        accepted = [r for r in rcpts if refused[r] is None]
        message_id = await self._store(envelope, accepted, raw) if accepted else None
        return [Verdict(r, refused[r], message_id if refused[r] is None else None)
                for r in rcpts]

    def refusals(self, rcpts: Sequence[str], raw: bytes) -> dict[str, SmtpReplyError | None]:
        """What refuses the message for each recipient (None: nothing does).

        Recipients were checked at RCPT time; what is decided here needs the content:
        size, hop count and our own loop marker for each recipient's list.
        """
        try:
            self.check_size(len(raw))
            header, _ = headers.split_message(raw)
            check_hops(header, self.policy.max_received_headers)
        except SmtpReplyError as error:
            MESSAGES_REJECTED.labels(code=error.enhanced).inc()
            return dict.fromkeys(rcpts, error)
        refused: dict[str, SmtpReplyError | None] = {}
        for rcpt in rcpts:
            try:
                check_not_looping(header, self.policy.instance_id, [rcpt])
                refused[rcpt] = None
            except SmtpReplyError as error:
                MESSAGES_REJECTED.labels(code=error.enhanced).inc()
                refused[rcpt] = error
        return refused

    async def _store(self, envelope: Envelope, rcpts: Sequence[str], raw: bytes) -> str:
        now = self.clock.now()
        message = InboundMessage(
            id=new_message_id(now), mail_from=envelope.mail_from, rcpt_tos=tuple(rcpts),
            blob=await content_digest(raw), size=len(raw), received_at=now,
            peer=envelope.peer, helo=envelope.helo, protocol=envelope.protocol,
        )
        try:
            await self.committer.commit(message, raw)
        except StorageUnavailable as error:
            MESSAGES_REJECTED.labels(code=error.enhanced).inc()
            raise
        MESSAGES_ACCEPTED.labels(protocol=envelope.protocol).inc()
        log.info("stored %s from=<%s> rcpt=%s size=%d", message.id, message.mail_from,
                 ",".join(rcpts), message.size,
                 extra={"action": "received", "queue_id": message.id})
        return message.id
