"""The accept service: the one place that decides whether a message is taken.

Every ingress (SMTP, LMTP, and the HTTP and cloud providers that follow) asks it the same
questions: does this recipient exist and may this sender write to it (at RCPT), then
what does the accept chain decide for each recipient (size, syntax, hops, loops, sender
entries: see ``pipeline.chain``); it makes the message durable and only then says yes.
Protocol adapters translate its errors into their own replies and hold no rules of their
own.

Decisions other than accept and reject:

* **discard**: the recipient is answered as accepted, gets no copy, and a ``discarded``
  event on the message says why.  The message is stored (with its accepted recipients
  only, maybe none) so that the event has a message to belong to and the client a
  queue id; a message left with no recipient is done at once.
* **hold**: the recipient is answered as accepted (the sender must not retry) and the
  held recipients are stored as a message of their own whose status is ``held`` (same
  blob, so no second copy of the content), with a ``held`` event saying why.  Nothing
  expands it until an owner releases it (``mailflow held release``: it becomes
  ``received`` and is expanded as if it had just arrived) or discards it.  A message
  with both taken and held recipients is two messages, committed together (the two
  commits run at once and usually share a transaction; if one fails the client gets a
  451 and retries, which at-least-once delivery allows).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from mailflow import addresses, headers, srs
from mailflow.clock import Clock
from mailflow.errors import (
    NoRecipients,
    PostingRefused,
    SenderBlocked,
    SmtpReplyError,
    StorageUnavailable,
    spec,
)
from mailflow.ids import new_message_id
from mailflow.metrics import ACCEPT_SECONDS, MESSAGES_ACCEPTED, MESSAGES_REJECTED, SENDERS_BLOCKED
from mailflow.model import Envelope, Event, InboundMessage, MessageStatus, Resolution, Verdict
from mailflow.pipeline.accept.blocklist import blocking_rule, judged_sender, sender_blocked
from mailflow.pipeline.accept.posting import Roster, envelope_identity, rcpt_refusal, restricted
from mailflow.pipeline.accept.recipients import Lookup, refusal
from mailflow.pipeline.accept.well_formed import without_mbox_from
from mailflow.pipeline.chain import AcceptStep, accept_chain, run_accept
from mailflow.pipeline.context import Action, Decision, MessageContext
from mailflow.services.commit import content_digest
from mailflow.services.filter_rules import FilterBook, no_filters
from mailflow.services.known_recipients import KnownRecipients
from mailflow.services.sender_rules import SenderRuleBook, no_rules
from mailflow.srs import Srs
from mailflow.store.runner import StoreRunner

log = logging.getLogger(__name__)


# What each decision other than accept and reject leaves on the message's trace.
EVENT_KINDS = {Action.HOLD: "held", Action.DISCARD: "discarded"}


@dataclass(frozen=True, slots=True)
class AcceptPolicy:
    """The accept chain's settings, plus how long a known recipient is remembered."""

    instance_id: str
    max_message_size: int
    max_received_headers: int
    recipient_cache_ttl: float = 2.0
    filter_regex_timeout: float = 0.5


class Committer(Protocol):
    """Makes a message durable (``services.commit.GroupCommitter``)."""

    async def commit(self, message: InboundMessage, data: bytes,
                     events: Sequence[Event] = ()) -> None: ...


def store_lookup(runner: StoreRunner) -> Lookup:
    """Recipient look-ups in the store, off the event loop; failures are temporary."""

    async def lookup(canonical: str) -> Resolution:
        return await runner.read_on_ingest(
            "recipient lookup", "cannot look up recipients right now, try again later",
            runner.repo.resolve, canonical)

    return lookup


class AcceptService:
    def __init__(self, lookup: Lookup, committer: Committer, clock: Clock,
                 policy: AcceptPolicy, steps: Sequence[AcceptStep] | None = None,
                 submit_steps: Sequence[AcceptStep] | None = None, *,
                 rules: SenderRuleBook | None = None,
                 filters: FilterBook | None = None, srs: Srs | None = None,
                 roster: Roster | None = None) -> None:
        """``lookup`` resolves a canonical address (see :func:`store_lookup`); ``rules``
        are the sender entries (see :func:`~mailflow.services.sender_rules.store_rule_book`;
        none without it), ``filters`` the lists' filter rules (likewise); ``steps`` and
        ``submit_steps`` replace the accept chain's two variants (tests); ``srs`` checks
        bounces to our SRS addresses (none are taken without it); ``roster`` reads the
        lists' rosters for their posting policies (every list is open without it)."""
        self.lookup = lookup
        self.srs = srs
        self.committer = committer
        self.clock = clock
        self.policy = policy
        self.known = KnownRecipients(clock, policy.recipient_cache_ttl)
        self.rules = rules if rules is not None else no_rules(clock)
        self.filters = filters if filters is not None else no_filters(clock)
        self.roster = roster
        self.steps = (steps if steps is not None
                      else accept_chain(policy, self._lookup, self.rules, submitted=False,
                                        filters=self.filters, roster=roster))
        self.submit_steps = (submit_steps if submit_steps is not None
                             else accept_chain(policy, self._lookup, self.rules,
                                               submitted=True, filters=self.filters,
                                               roster=roster))

    async def _lookup(self, canonical: str) -> Resolution:
        """What ``canonical`` is here: from the recent answers, else the store."""
        resolution = self.known.get(canonical)
        if resolution is None:
            resolution = await self.lookup(canonical)
            if resolution.kind == "unknown_address" and srs.is_srs(canonical):
                resolution = self._bounce_address(canonical)
            self.known.remember(canonical, resolution)
        return resolution

    def _bounce_address(self, canonical: str) -> Resolution:
        """An SRS address of a served domain: a bounce to relay if its hash and age
        hold (the hash is case-insensitive, so the canonical form checks as well)."""
        if self.srs is None:
            return Resolution("bad_srs", detail="SRS is off")
        try:
            return Resolution("srs", detail=self.srs.reverse(canonical, self.clock.now()))
        except srs.SrsError as exc:
            return Resolution("bad_srs", detail=str(exc))

    async def check_recipient(self, address: str, sender: str = "", *,
                              count: bool = True) -> Resolution:
        """Raise unless ``address`` is a list, an alias or a list's bounce address here,
        and no block entry covers ``sender`` for it.

        Each ``RCPT TO`` is its own question: a sender blocked for this recipient is
        refused here, whatever the other recipients (as Postfix, asking the policy
        service one recipient at a time, refuses it).  ``count=False`` for questions that
        are not refusals (the policy service asks about every recipient its Postfix
        sees, ours or not).
        """
        canonical = addresses.canonical(address)
        resolution = await self._lookup(canonical)
        error = refusal(address, resolution)
        if error is None and sender:
            error = await self._sender_refusal(judged_sender(sender), canonical, address)
        if error is None and sender:
            error = await self._posting_refusal(resolution, envelope_identity(sender))
        if error is not None:
            if count:
                count_refusal(error, sender, [address])
            raise error
        return resolution

    async def _sender_refusal(self, sender: str, canonical: str, address: str
                              ) -> SenderBlocked | None:
        """The refusal of ``sender`` for one recipient; the entries matching the sender
        are fetched once (per ``recipient_cache_ttl``) for all its recipients."""
        if not sender:
            return None
        rules = await self.rules.matching(sender)
        if rules and blocking_rule(rules, canonical) is not None:
            return sender_blocked(sender, [address])
        return None

    async def _posting_refusal(self, resolution: Resolution, sender: str
                               ) -> PostingRefused | None:
        """The refusal of a post by ``sender`` (the envelope's) where the list's posting
        policy refuses it whatever its ``From:`` field (one roster query, for restricted
        lists only); the rest is decided after DATA."""
        target = resolution.mailing_list
        if (self.roster is None or not sender or resolution.kind != "list"
                or target is None or not restricted(target)):
            return None
        roles = await self.roster.roles([target.id], [sender])
        return rcpt_refusal(target, sender, roles.get((target.id, sender)))

    def answers_for_every_sender(self, resolution: Resolution | None = None) -> bool:
        """Whether a positive :meth:`check_recipient` answer holds whatever the sender
        (no sender entry exists, as last counted, and the recipient is no list whose
        posting policy asks who sends): the child may then remember the recipient
        alone, else only with its sender."""
        return self.rules.empty and not (
            self.roster is not None and resolution is not None
            and resolution.kind == "list" and restricted(resolution.mailing_list))

    async def submit(self, envelope: Envelope, raw: bytes) -> str:
        """Check a whole submission, then accept it: for ingresses without RCPT (HTTP, pipe).

        The same chain as an SMTP conversation, with the recipient and syntax checks an
        SMTP client would have passed before; all or nothing.
        """
        return (await self.submit_message(envelope, raw)).id

    async def submit_message(self, envelope: Envelope, raw: bytes) -> InboundMessage:
        """:meth:`submit`, answering with the message as stored: its status is ``held``
        when the chain held it for every recipient (an ingress that reports outcomes,
        such as the SES audit trail, tells that apart)."""
        if not envelope.rcpt_tos:
            raise NoRecipients("no recipient given")
        raw = without_mbox_from(raw)
        return await self._accept_all(MessageContext.of(envelope, raw, submitted=True))

    async def accept(self, envelope: Envelope, raw: bytes) -> str:
        """Store a message for every recipient or for none (SMTP semantics)."""
        return (await self._accept_all(self._context(envelope, raw))).id

    async def accept_each(self, envelope: Envelope, raw: bytes) -> list[Verdict]:
        """Decide per recipient and store one message for those taken (LMTP semantics)."""
        started = time.perf_counter()
        ctx = self._context(envelope, raw)
        decisions, decided = await self._decide(ctx)
        taken = len(decided) < len(decisions) or any(
            d.action is not Action.REJECT for d in decided.values())
        message_id = None
        if taken:
            message_id = (await self._store(ctx, decisions, decided)).id
            ACCEPT_SECONDS.observe(time.perf_counter() - started)
        rcpts = [addresses.canonical(r) for r in envelope.rcpt_tos]
        return [Verdict(r, decisions[r].error,
                        message_id if decisions[r].error is None else None) for r in rcpts]

    def _context(self, envelope: Envelope, raw: bytes) -> MessageContext:
        """The context of an SMTP/LMTP message: its recipients were resolved at RCPT,
        and are taken from the recipient cache where still there (no query)."""
        ctx = MessageContext.of(envelope, raw)
        for rcpt in ctx.recipients.values():
            rcpt.resolution = self.known.get(rcpt.canonical)
        return ctx

    async def _accept_all(self, ctx: MessageContext) -> InboundMessage:
        started = time.perf_counter()
        decisions, decided = await self._decide(ctx, all_or_nothing=True)
        for decision in decided.values():
            if decision.error is not None:
                raise decision.error
        stored = await self._store(ctx, decisions, decided)
        ACCEPT_SECONDS.observe(time.perf_counter() - started)
        return stored

    async def _decide(self, ctx: MessageContext, *, all_or_nothing: bool = False
                      ) -> tuple[dict[str, Decision], dict[str, Decision]]:
        """The accept chain's decisions, and those among them other than accept.

        Each distinct refusal is counted once (a message-wide one is one object).
        """
        decisions = await run_accept(self.submit_steps if ctx.submitted else self.steps, ctx,
                                     all_or_nothing=all_or_nothing)
        decided = {r: d for r, d in decisions.items() if d.action is not Action.ACCEPT}
        if decided:
            refused: dict[int, tuple[SmtpReplyError, list[str]]] = {}
            for rcpt, decision in decided.items():
                if decision.error is not None:
                    refused.setdefault(id(decision.error), (decision.error, []))[1].append(rcpt)
            for error, rcpts in refused.values():
                count_refusal(error, ctx.envelope.mail_from, rcpts)
        return decisions, decided

    async def _store(self, ctx: MessageContext, decisions: dict[str, Decision],
                     decided: dict[str, Decision]) -> InboundMessage:
        envelope, raw = ctx.envelope, ctx.raw
        now = self.clock.now()
        message_id = new_message_id(now)
        rcpts = tuple(r for r in decisions if r not in decided) if decided else tuple(decisions)
        events = [Event(EVENT_KINDS[d.action], f"{r}: {d.reason}", message_id)
                  for r, d in decided.items() if d.action is Action.DISCARD] if decided else []
        held = [r for r, d in decided.items() if d.action is Action.HOLD]
        digest = await content_digest(raw)
        header_id = headers.message_id(ctx.header, ctx.lowered)
        message = InboundMessage(
            id=message_id, mail_from=envelope.mail_from, rcpt_tos=rcpts,
            blob=digest, size=len(raw), received_at=now,
            peer=envelope.peer, helo=envelope.helo, protocol=envelope.protocol,
            header_id=header_id,
        )
        commits = []
        if held:
            held_id = message_id if not rcpts and not events else new_message_id(now)
            held_message = InboundMessage(
                id=held_id, mail_from=envelope.mail_from, rcpt_tos=tuple(held),
                blob=digest, size=len(raw), received_at=now, peer=envelope.peer,
                helo=envelope.helo, protocol=envelope.protocol, status=MessageStatus.HELD,
                header_id=header_id)
            commits.append(self.committer.commit(
                held_message, raw, [Event("held", f"{r}: {decided[r].reason}", held_id)
                                    for r in held]))
            if held_id == message_id:
                message = held_message
        if message.status is not MessageStatus.HELD:
            commits.append(self.committer.commit(message, raw, events))
        try:
            await asyncio.gather(*commits)
        except StorageUnavailable as error:
            count_refusal(error, envelope.mail_from, envelope.rcpt_tos)
            raise
        MESSAGES_ACCEPTED.labels(protocol=envelope.protocol).inc()
        if log.isEnabledFor(logging.INFO):
            _log_received(message, header_id, held)
        return message


def _log_received(message: InboundMessage, header_id: str, held: list[str]) -> None:
    """The mail log's ``receive`` line (the message is stored; its 250 is next)."""
    rcpts = ",".join(message.rcpt_tos)
    log.info("receive %s message-id=%s from=<%s> rcpt=%s size=%d via %s peer=%s%s",
             message.id, header_id or "-", message.mail_from, rcpts, message.size,
             message.protocol, message.peer or "-",
             f" held for {','.join(held)}" if held else "",
             extra={"action": "received", "queue_id": message.id, "message_id": header_id,
                    "sender": message.mail_from, "recipient": rcpts})


def count_refusal(error: SmtpReplyError, sender: str, recipients: Sequence[str]) -> None:
    """Count one refusal (of a message, or of a recipient at RCPT) by its code and
    reason, and log it (its reply is the one the client got)."""
    key = spec(error).key
    MESSAGES_REJECTED.labels(code=error.enhanced, reason=key).inc()
    if isinstance(error, SenderBlocked):
        SENDERS_BLOCKED.inc()
    log.info("reject from=<%s> rcpt=%s: %s", sender, ",".join(recipients), error.smtp_reply(),
             extra={"action": "reject", "reason": key, "sender": sender,
                    "recipient": ",".join(recipients), "reply": error.smtp_reply()})
