"""Plain value objects that travel between ingress, pipeline, queue and egress.

They carry no database session and no behaviour beyond derived names, so any stage can be
tested with hand-made instances.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal, NamedTuple, Protocol

from mailflow import addresses

if TYPE_CHECKING:
    from mailflow.errors import SmtpReplyError


class ListKind(enum.StrEnum):
    LIST = "list"    # a mailing list: members get a copy with List-* headers
    ALIAS = "alias"  # a forwarding address: targets may live outside our domains
    ECHO = "echo"    # answers every message with a copy of it to its sender (tests a set-up)


class ForwardStyle(enum.StrEnum):
    """How an alias passes a message on (lists always resend)."""

    RESEND = "resend"  # the message as received, in a new envelope
    FWD = "fwd"        # a new message from the alias: "Fwd:", the original's parts inside


class MemberStatus(enum.StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"  # kept on the roster, receives nothing (bounces, vacation)


class MessageStatus(enum.StrEnum):
    RECEIVED = "received"  # durable, not yet expanded into deliveries
    HELD = "held"          # kept by a filter rule until an owner releases or discards it
    QUEUED = "queued"      # deliveries exist, some still pending
    DONE = "done"          # every delivery is final; the blob reference is released


class DeliveryStatus(enum.StrEnum):
    QUEUED = "queued"
    IN_FLIGHT = "in_flight"
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    FAILED = "failed"


PENDING_STATUSES = (DeliveryStatus.QUEUED, DeliveryStatus.IN_FLIGHT, DeliveryStatus.DEFERRED)


@dataclass(frozen=True, slots=True)
class Domain:
    id: int
    name: str
    created_at: float


@dataclass(frozen=True, slots=True)
class MailingList:
    id: int
    address: str
    kind: ListKind
    name: str
    priority: int
    created_at: float
    forward_style: ForwardStyle = ForwardStyle.RESEND

    @property
    def bounces_address(self) -> str:
        return addresses.bounces_address(self.address)

    @property
    def list_id(self) -> str:
        """The RFC 2919 identifier: ``team.example.test`` for ``team@example.test``."""
        local, domain = addresses.split(self.address)
        return f"{local}.{domain}"


#: The role addresses the relay answers for itself in every served domain: ``postmaster``
#: (RFC 5321 4.5.1, also without a domain) and ``abuse`` (RFC 2142), each an alias to the
#: address its setting names (``postmaster_address``, ``abuse_address``).  They are not
#: rows: the setting is their one source, so a changed setting needs no migration and a
#: domain added later has them at once.  Their ids are negative, so no row has them.
ROLE_ALIAS_IDS: Final = {"postmaster": -1, "abuse": -2}
#: The role RFC 5321 requires to be accepted without a domain (``RCPT TO:<postmaster>``).
BARE_ROLE: Final = "postmaster"


def role_alias(role: str) -> MailingList:
    """The alias behind ``<role>@<each served domain>`` (see :data:`ROLE_ALIAS_IDS`).

    Its address is the bare role, the same for every domain, and has no domain: so its
    copies go out with the null sender, as notifications to the operator (a failed one
    is recorded, never bounced, so it cannot start a bounce loop).
    """
    return MailingList(id=ROLE_ALIAS_IDS[role], address=role, kind=ListKind.ALIAS, name="",
                       priority=0, created_at=0.0)


def role_alias_by_id(list_id: int) -> MailingList | None:
    for role, role_id in ROLE_ALIAS_IDS.items():
        if role_id == list_id:
            return role_alias(role)
    return None


@dataclass(frozen=True, slots=True)
class Member:
    list_id: int
    address: str
    status: MemberStatus
    created_at: float
    name: str = ""  # display name; the directory refuses control characters in it


class AddedMembers(NamedTuple):
    """What adding members to a roster did."""

    added: int     # new members
    existing: int  # already members (their status kept)
    renamed: int   # of those, how many got the new display name given for them


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the SMTP conversation (or any other ingress) says about a message."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    peer: str = ""
    helo: str = ""
    protocol: str = "ESMTP"


@dataclass(frozen=True, slots=True)
class Verdict:
    """Per-recipient answer for a message (LMTP): ``error`` is None where it was accepted.

    Here, not in the accept service, because it crosses to the listener process, which
    must unpickle it without importing the store."""

    recipient: str
    error: SmtpReplyError | None
    message_id: str | None = None


@dataclass(slots=True)
class InboundMessage:
    """A stored inbound message as the pipeline sees it."""

    id: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    blob: str
    size: int
    received_at: float
    peer: str
    helo: str
    protocol: str
    status: MessageStatus = MessageStatus.RECEIVED


# ``InboundMessage.protocol`` of a message the relay wrote itself (an auto-reply, an
# echo): sent with the null envelope sender and without our Received field.
GENERATED = "generated"


@dataclass(frozen=True, slots=True)
class GeneratedMessage:
    """A message a processing step wrote (an auto-reply), stored with its body in the
    database and delivered like any other."""

    message: InboundMessage
    content: bytes


@dataclass(frozen=True, slots=True)
class AutoReply:
    """An out-of-office reply of one list or alias: templates (``$sender``, ``$subject``,
    ``$address``), an optional period (epoch seconds) and the per-sender interval."""

    address: str
    subject: str
    body: str
    starts_at: float | None = None
    ends_at: float | None = None
    once_per_days: int = 7
    created_at: float = 0.0

    def active(self, now: float) -> bool:
        return ((self.starts_at is None or self.starts_at <= now)
                and (self.ends_at is None or now < self.ends_at))


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """One recipient of one message through one list, as the pipeline plans it."""

    message_id: str
    list_id: int
    recipient: str
    priority: int


@dataclass(slots=True)
class Delivery:
    """A claimed delivery with what the scheduler needs to send it."""

    id: int
    message_id: str
    list_id: int
    recipient: str
    attempts: int
    created_at: float
    priority: int = 0
    # The lease: who holds it (one token per claim, see the scheduler) and until when.
    # Only the holder of the lease may record the delivery's outcome.
    lease_owner: str = ""
    due_at: float = 0.0
    status: DeliveryStatus = DeliveryStatus.IN_FLIGHT
    last_reply: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Lease:
    """Who leases fresh deliveries at ingest (a lease token), for how long, how many."""

    owner: str
    seconds: float
    limit: int


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """What one ingest transaction left to do."""

    left: int                # messages left ``received`` for the processor
    queued: int              # deliveries queued for a claim
    leased: list[Delivery]   # deliveries already leased to the caller's scheduler
    stale: list[Outcome] = field(default_factory=list)  # outcomes of lost leases: not applied


@dataclass(frozen=True, slots=True)
class Resolution:
    """What an envelope recipient is to this relay."""

    kind: Literal["list", "bounces", "srs", "bad_srs", "unknown_domain", "unknown_address"]
    mailing_list: MailingList | None = None
    # "srs": where the bounce goes (the original sender); "bad_srs": why it is refused.
    detail: str = ""


#: The ``list_id`` of deliveries no list or alias sends: bounces relayed to a forward's
#: original sender (SRS) and the relay's failure notices.  Sent with the null sender.
RELAYED = 0


class RuleAction(enum.StrEnum):
    BLOCK = "block"  # the sender's mail is refused (or dropped) for the recipients covered
    ALLOW = "allow"  # overrides blocks of the same or a wider scope


class RuleScope(enum.IntEnum):
    """Which recipients a sender rule covers; a larger value is a narrower scope."""

    GLOBAL = 0   # every recipient of the relay
    DOMAIN = 1   # every list and alias of one domain
    ADDRESS = 2  # one list or alias


@dataclass(frozen=True, slots=True)
class SenderRule:
    """A block or allow entry: senders matching ``pattern``, for the recipients of
    ``target`` (empty: every recipient; a domain; or one list or alias address).

    ``pattern`` is in lower case; ``*`` stands for any run of characters, ``?`` for one.
    """

    action: RuleAction
    pattern: str
    target: str = ""
    created_at: float = 0.0

    @property
    def scope(self) -> RuleScope:
        if not self.target:
            return RuleScope.GLOBAL
        return RuleScope.ADDRESS if "@" in self.target else RuleScope.DOMAIN


class FilterCondition(enum.StrEnum):
    HEADER = "header"                # a header field (``header``) matches ``argument``
    BODY = "body"                    # the decoded text parts match ``argument``
    LARGER_THAN = "larger_than"      # the message is larger than ``argument`` bytes
    ATTACHMENT = "attachment"        # an attachment's MIME type or file name matches a glob
    NOT_ENCRYPTED = "not_encrypted"  # neither PGP/MIME nor S/MIME encrypted


class FilterAction(enum.StrEnum):
    REJECT = "reject"    # refused (550 5.7.1 with the rule's text)
    DISCARD = "discard"  # accepted, not delivered, an event says why
    HOLD = "hold"        # kept (message status ``held``) until an owner decides


@dataclass(frozen=True, slots=True)
class FilterRule:
    """One filter rule of a list or alias: if ``condition`` holds, ``action``.

    A list's rules are tried in the order they were added (``id``); the first that
    matches decides.
    """

    target: str                 # the list or alias address
    condition: FilterCondition
    argument: str               # regular expression, glob or byte count; '' for not_encrypted
    action: FilterAction
    header: str = ""            # the field name, for a header condition
    text: str = ""              # what a reject tells the sender, what an event says
    id: int = 0
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class HeldMessage:
    """A message a filter rule holds, as ``mailflow held ls`` shows it."""

    id: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    size: int
    received_at: float
    reason: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one delivery attempt, as the scheduler decided it.

    ``lease`` is the lease token the delivery was claimed with: the store applies the
    outcome only while the delivery is still in flight under that lease, so a sender
    whose lease was lost (expired and claimed again) cannot overwrite the new holder's.
    """

    delivery_id: int
    status: DeliveryStatus  # delivered, deferred or failed (queued: handed back)
    reply: str
    due_at: float = 0.0
    message_id: str = ""
    lease: str = field(kw_only=True)


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    detail: str
    message_id: str | None = None
    delivery_id: int | None = None


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """A delivery as listed by ``mailflow queue show``."""

    id: int
    message_id: str
    list_address: str | None
    recipient: str
    status: str
    attempts: int
    due_at: float
    created_at: float
    updated_at: float
    last_reply: str | None


@dataclass(frozen=True, slots=True)
class RecipientReply:
    recipient: str
    code: int
    text: str

    @property
    def delivered(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


class Egress(Protocol):
    name: str

    async def start(self) -> None: ...

    async def send(self, mail_from: str, recipients: Sequence[str],
                   content: bytes) -> list[RecipientReply]: ...

    async def close(self) -> None: ...


# -- who may use the API (issue 14) -----------------------------------------------------

class ListRole(enum.StrEnum):
    """A user's role on one list: an owner changes it, a moderator reads it and decides
    about its held messages."""

    OWNER = "owner"
    MODERATOR = "moderator"


class TokenScope(enum.StrEnum):
    READ = "read"
    WRITE = "write"


@dataclass(frozen=True, slots=True)
class User:
    id: int
    email: str
    is_admin: bool
    created_at: float


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A token as listed: never its secret, which only its creator saw once."""

    id: int
    user_email: str | None  # None: a site token, acting as a site admin
    scope: TokenScope
    label: str
    created_at: float


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    created_at: float
    actor: str    # a user's address, or ``token:<id>`` for a site token, or ``cli``
    action: str   # ``list.update``, ``member.import``, …
    target: str   # what it changed: a list address, a domain, a user
    detail: str
