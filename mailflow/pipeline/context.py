"""What a step sees: one typed context per chain, and the decisions an accept step makes.

Mailman's handlers share a free-form ``msgdata`` dict; here each chain has its own
dataclass, so a step's inputs and outputs are visible in its signature.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mailflow import addresses, headers
from mailflow.errors import SmtpReplyError
from mailflow.model import (
    AuthorField,
    AutoReply,
    BounceReport,
    Envelope,
    Event,
    FilterRule,
    GeneratedMessage,
    InboundMessage,
    MailingList,
    Member,
    MemberRole,
    MembershipChange,
    NewDelivery,
    Resolution,
    SenderRule,
)
from mailflow.unsubscribe_tokens import UnsubscribeTokens


@dataclass(slots=True)
class Recipient:
    """One envelope recipient: as given, canonical, and what it is here (once known).

    ``resolution`` is filled where the accept service knows it without another query
    (the recipient cache after RCPT, or the submission's own look-up); the processing
    chain resolves every recipient on the ingest's open connection.
    """

    address: str
    canonical: str
    resolution: Resolution | None = None


@dataclass(slots=True)
class MessageContext:
    """A message before the 250: envelope, raw bytes and the header section, split once.

    ``submitted`` marks input without an SMTP conversation (HTTP, ``mailflow pipe``):
    its recipients were not checked at RCPT and its syntax is not trusted (it runs the
    accept chain's submission variant).
    """

    envelope: Envelope
    raw: bytes
    header: bytes
    lowered: bytes                    # the header section in lower case, for quick scans
    recipients: dict[str, Recipient]  # by canonical address, in envelope order
    submitted: bool = False

    @classmethod
    def of(cls, envelope: Envelope, raw: bytes, *, submitted: bool = False,
           known: Mapping[str, Resolution] | None = None) -> MessageContext:
        header = raw[:headers.header_length(raw)]
        recipients: dict[str, Recipient] = {}
        for address in envelope.rcpt_tos:
            canonical = addresses.canonical(address)
            if canonical not in recipients:
                resolution = known.get(canonical) if known else None
                recipients[canonical] = Recipient(address, canonical, resolution)
        return cls(envelope, raw, header, header.lower(), recipients, submitted)

    @property
    def size(self) -> int:
        return len(self.raw)


class Action(enum.StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"    # refused with an SMTP error; the sender is told
    HOLD = "hold"        # kept for a moderator (see the accept service for today's handling)
    DISCARD = "discard"  # answered as accepted, never delivered; an event says why


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str = ""
    error: SmtpReplyError | None = None

    @classmethod
    def reject(cls, error: SmtpReplyError) -> Decision:
        return cls(Action.REJECT, str(error), error)

    @classmethod
    def hold(cls, reason: str) -> Decision:
        return cls(Action.HOLD, reason)

    @classmethod
    def discard(cls, reason: str) -> Decision:
        return cls(Action.DISCARD, reason)


ACCEPT = Decision(Action.ACCEPT)


def for_all(recipients: Iterable[Recipient], decision: Decision) -> dict[str, Decision]:
    """The same decision for every recipient (a message-wide rule)."""
    return dict.fromkeys((r.canonical for r in recipients), decision)


class SenderRules(Protocol):
    """The sender entries an accept step needs (``services.sender_rules`` in the relay).

    By sender alone, not per recipient: one question (one store query at most) answers
    for every recipient of a message, and for each of its ``RCPT TO`` commands.
    """

    async def matching(self, sender: str) -> Sequence[SenderRule]:
        """Every block and allow entry, of any scope, whose pattern matches ``sender``
        (canonical; the null sender matches none)."""
        ...


class Directory(Protocol):
    """Directory look-ups the processing chain needs (on the transaction's connection)."""

    def resolve(self, address: str) -> Resolution: ...
    def active_member_addresses(self, list_id: int) -> list[str]: ...
    def autoreply(self, mailing_list: MailingList) -> AutoReply | None: ...
    def last_reply(self, list_id: int, sender: str) -> float | None: ...
    def note_reply(self, list_id: int, sender: str, now: float) -> None:
        """Remember a reply for the rest of the batch (the log row is written with the
        reply, see ``ProcessContext.replied``)."""
        ...
    def roster(self, list_id: int) -> list[str]:
        """Every member's address, whatever its status (bounces name disabled ones too)."""
        ...
    def verp_member(self, mailing_list: MailingList, token: str) -> str | None:
        """The member a VERP token of ``mailing_list``'s bounce address names, or None."""
        ...
    def is_member(self, list_id: int, address: str) -> bool:
        """Whether ``address`` is on the roster (any status)."""
        ...
    def staff(self, list_id: int, roles: Sequence[MemberRole]) -> list[str]:
        """The list's active members with one of ``roles`` (its owners, moderators)."""
        ...
    def command_replies(self, address: str, now: float) -> int:
        """Replies to list commands ``address`` got today (this batch's included)."""
        ...
    def note_command_reply(self, address: str) -> None:
        """Count one reply for the rest of the batch (the count is written with it, see
        ``ProcessContext.answered``)."""
        ...


def _no_content() -> bytes:
    return b""


@dataclass(slots=True)
class ProcessContext:
    """A stored message after its durable commit, and what its steps produce.

    ``content`` reads the message's bytes, for the few steps that need them (an
    auto-reply quotes the original): only then, as most messages are expanded without.
    ``generated``: new messages a step wrote, stored in the same transaction, whose
    deliveries are among ``deliveries``.
    """

    message: InboundMessage
    directory: Directory
    now: float = 0.0
    content: Callable[[], bytes] = _no_content
    deliveries: list[NewDelivery] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    generated: list[GeneratedMessage] = field(default_factory=list)
    replied: list[tuple[int, str]] = field(default_factory=list)  # (list id, sender) to log
    bounces: list[BounceReport] = field(default_factory=list)  # counted by the transaction
    # List commands: roster changes and requests to write, addresses answered (counted).
    memberships: list[MembershipChange] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)

    def event(self, kind: str, detail: str) -> None:
        self.events.append(Event(kind, detail, self.message.id))


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this relay is, as outgoing copies name it.

    ``public_url``: the relay's public base URL for the List-* links ('' for none);
    ``unsubscribe``: what signs the one-click links of copies rendered for one member.
    """

    instance_id: str
    hostname: str
    public_url: str = ""
    unsubscribe: UnsubscribeTokens | None = None


@dataclass(slots=True)
class CopyContext:
    """One outgoing copy being built: fields to prepend and list fields to replace.

    The body and every original header byte stay as received; steps add fields (in
    order, before the header section) and name fields to drop from it.  One step may
    replace ``header`` and ``body`` as a whole (the ``fwd`` style: a new message that
    carries the original's parts); it runs first, so the others see the new header.
    """

    message: InboundMessage
    mailing_list: MailingList
    identity: Identity
    header: bytes
    body: bytes | memoryview = b""  # a view of the stored message until a step replaces it
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    # Set when the list's From: replaces the author's (DMARC): where the author goes.
    rewrite_from: AuthorField | None = None
    member: Member | None = None  # a copy rendered for one member (personalized), or shared
    filter_rule: FilterRule | None = None  # the list's tag or strip rule that applies
