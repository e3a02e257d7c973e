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


class DmarcMode(enum.StrEnum):
    """When a list's copies carry the list's address in ``From:`` instead of the author's.

    A receiver that checks DMARC sees a list copy as a message from the author's domain
    that the author's domain did not sign (the list changed it): under ``p=reject`` it
    refuses the copy, so the list rewrites ``From:`` to an address of its own.
    """

    NEVER = "never"    # the author's From: always (a list that changes nothing, or trusts ARC)
    AUTO = "auto"      # rewritten when the author's domain publishes p=quarantine or p=reject
    ALWAYS = "always"  # rewritten for every post


class AuthorField(enum.StrEnum):
    """Where the author's address goes when a list copy's From: is the list's."""

    REPLY_TO = "reply-to"  # replies reach the author (Mailman's default)
    CC = "cc"              # replies reach the list, the author is copied


class MemberStatus(enum.StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"  # kept on the roster, receives nothing (bounces, vacation)
    UNSUBSCRIBED = "unsubscribed"  # left (a complaint, a one-click unsubscribe): nothing


class MemberRole(enum.StrEnum):
    """What a member may do on its list (Mailman 3's roster roles)."""

    OWNER = "owner"          # runs the list: posts to announce lists, moderates
    MODERATOR = "moderator"  # posts to announce lists, approves or rejects held posts
    MEMBER = "member"        # receives the list's mail, posts where members may

    @property
    def moderates(self) -> bool:
        return self is not MemberRole.MEMBER


class PostingPolicy(enum.StrEnum):
    """Who may post to a list (``mailflow list update --posting``)."""

    OPEN = "open"            # anyone
    MEMBERS = "members"      # members; others get the list's non-member action
    MODERATED = "moderated"  # every post held for a moderator (theirs and owners' pass)
    ANNOUNCE = "announce"    # owners and moderators only; others get the non-member action


class SubscriptionPolicy(enum.StrEnum):
    """How a request to join a list by mail or on its page is handled
    (``mailflow list update --subscription``)."""

    OPEN = "open"        # joined at once, welcomed
    CONFIRM = "confirm"  # double opt-in: joined once the address confirms (the default)
    APPROVE = "approve"  # held for the list's owners and moderators
    CLOSED = "closed"    # refused: the owners add members themselves


class NonMemberAction(enum.StrEnum):
    """What a post from someone the posting policy does not admit gets."""

    REJECT = "reject"    # refused: 550 5.7.1 at RCPT or after DATA
    HOLD = "hold"        # held for a moderator
    DISCARD = "discard"  # answered as accepted, dropped, an event says why


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
    HELD = "held"        # an operator held it (``mailflow queue hold``): never claimed
    DELETED = "deleted"  # an operator deleted it (``mailflow queue delete``): final


# Claimable: what the scheduler's claim takes once due.
PENDING_STATUSES = (DeliveryStatus.QUEUED, DeliveryStatus.IN_FLIGHT, DeliveryStatus.DEFERRED)
# Not final: a message with such a delivery is not finished (its blob is kept).
UNFINISHED_STATUSES = (*PENDING_STATUSES, DeliveryStatus.HELD)


@dataclass(frozen=True, slots=True)
class Domain:
    id: int
    name: str
    created_at: float


class ReplyTo(enum.StrEnum):
    """Where a list's copies send replies (an address is the third choice, see
    :class:`Decoration`)."""

    NONE = "none"  # the post's own Reply-To, if any, stays
    LIST = "list"  # Reply-To: the list


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Decoration:
    """What a list adds to each copy (issue 12 part 5); empty values add nothing.

    ``reply_to`` is ``none``, ``list`` or an address.  The templates are Jinja2 sources
    rendered in a sandbox (``pipeline/send/templates.py``); the directory bounds their
    length, so a list row stays small wherever it is cached.
    """

    subject_prefix: str = ""
    reply_to: str = ReplyTo.NONE.value
    header_template: str = ""
    footer_template: str = ""
    archive_url: str = ""

    @property
    def changes_copies(self) -> bool:
        """Whether rendering a copy has anything of this to do (else: the fast path)."""
        return bool(self.subject_prefix or self.header_template or self.footer_template
                    or self.reply_to != ReplyTo.NONE.value)


NO_DECORATION: Final = Decoration()


@dataclass(frozen=True, slots=True)
class MailingList:
    id: int
    address: str
    kind: ListKind
    name: str
    priority: int
    created_at: float
    forward_style: ForwardStyle = ForwardStyle.RESEND
    dmarc: DmarcMode = DmarcMode.NEVER
    posting: PostingPolicy = PostingPolicy.OPEN
    non_member_action: NonMemberAction = NonMemberAction.REJECT
    hold_days: int = 14  # held posts are discarded, requests to join expire, after this many days
    decoration: Decoration = NO_DECORATION
    personalize: bool = False       # one copy per member, VERP envelope sender
    bounce_threshold: float = 5.0   # the bounce score that disables a member
    subscription: SubscriptionPolicy = SubscriptionPolicy.CONFIRM
    # Jinja2 sources (``pipeline/send/templates.py``) of the mail a new member and a
    # leaving one get; '' for the relay's default text.
    welcome_template: str = ""
    goodbye_template: str = ""

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
    role: MemberRole = MemberRole.MEMBER
    bounce_score: float = 0.0
    last_bounce_at: float | None = None


class BounceKind(enum.StrEnum):
    PERMANENT = "permanent"  # +1 to the score
    TEMPORARY = "temporary"  # +0.5
    COMPLAINT = "complaint"  # an ARF feedback report: unsubscribed and suppressed


class BounceSource(enum.StrEnum):
    VERP = "verp"          # the member named by the VERP token of the address it came to
    DSN = "dsn"            # found in the bounce message (flufl.bounce)
    DELIVERY = "delivery"  # a 5xx reply at delivery time
    ARF = "arf"            # an RFC 5965 feedback report


@dataclass(frozen=True, slots=True)
class BounceReport:
    """One bounce or complaint naming one member of one list (the processing chain and
    the delivery outcomes produce these; the store counts them)."""

    list_id: int
    address: str
    kind: BounceKind
    source: BounceSource
    detail: str = ""


@dataclass(frozen=True, slots=True)
class BounceEventRow:
    """A bounce as ``mailflow bounces ls`` shows it."""

    list_address: str
    address: str
    kind: str
    source: str
    counted: bool
    detail: str
    created_at: float


@dataclass(frozen=True, slots=True)
class Suppression:
    """An address no copy goes to: for every list (``target`` '') or one list."""

    address: str
    target: str = ""
    reason: str = ""
    created_at: float = 0.0


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
    header_id: str = ""  # its Message-ID field (``headers.message_id``), for the trace


# ``InboundMessage.protocol`` of a message the relay wrote itself (an auto-reply, an
# echo): sent with the null envelope sender and without our Received field.
GENERATED = "generated"


@dataclass(frozen=True, slots=True)
class GeneratedMessage:
    """A message a processing step wrote (an auto-reply), stored with its body in the
    database and delivered like any other.  Empty ``content``: a copy of a stored
    message (mail forwarded to a list's owners), sharing its blob."""

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

    kind: Literal["list", "bounces", "request", "owner", "srs", "bad_srs", "unknown_domain",
                  "unknown_address"]
    mailing_list: MailingList | None = None
    # "srs": where the bounce goes (the original sender); "bad_srs": why it is refused;
    # "request": which robot address of the list (join, leave or request).
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
    TAG = "tag"          # delivered with a header field added (the rule's ``text``)
    STRIP = "strip"      # delivered without the attachments its condition names


#: The actions that change the copies rather than decide at the accept step.
COPY_ACTIONS: Final = frozenset({FilterAction.TAG, FilterAction.STRIP})


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
    text: str = ""              # what a reject tells the sender, what an event says;
                                # for ``tag``, the field it adds (``Name: value``)
    id: int = 0
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class DkimKey:
    """A domain's DKIM signing key: copies of its lists and aliases are signed with it."""

    domain: str
    selector: str
    private_key: str  # PEM (PKCS#1), as dkimpy reads it
    public_key: str   # base64 DER SubjectPublicKeyInfo: the ``p=`` of the DNS record
    created_at: float

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def dns_text(self) -> str:
        """The TXT record's value (RFC 6376 3.6.1)."""
        return f"v=DKIM1; k=rsa; p={self.public_key}"


@dataclass(frozen=True, slots=True)
class HeldMessage:
    """A message a filter rule holds, as ``mailflow held ls`` shows it."""

    id: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    size: int
    received_at: float
    reason: str


class MembershipAction(enum.StrEnum):
    JOIN = "join"        # add the address as a member
    LEAVE = "leave"      # remove it
    REQUEST = "request"  # record a request to join for the owners (``approve`` lists)


@dataclass(frozen=True, slots=True)
class MembershipChange:
    """A roster change a list command decided, written with the message's processing."""

    list_id: int
    address: str
    action: MembershipAction


@dataclass(frozen=True, slots=True)
class SubscriptionRequest:
    """A request to join an ``approve`` list, waiting for an owner or moderator."""

    id: int
    list_id: int
    list_address: str
    address: str
    created_at: float


@dataclass(frozen=True, slots=True)
class HeldPost:
    """A held message as one list's moderators were told of it."""

    message_id: str
    list_id: int
    list_address: str
    author: str       # whom a rejection notice goes to ('' for none)
    reason: str
    expires_at: float


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
    provider_id: str = field(default="", kw_only=True)  # the egress provider's id of the copy


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
class TraceStep:
    """One thing that happened to a message (``mailflow trace``): ``kind`` is an event
    kind (``received``, ``expanded``, ``deferred``, ``delivered`` …), ``recipient`` the
    delivery's when the step is about one."""

    at: float
    kind: str
    detail: str
    recipient: str | None = None
    delivery_id: int | None = None


@dataclass(frozen=True, slots=True)
class MessageTrace:
    """A message's timeline and where each of its deliveries stands now."""

    message: InboundMessage
    steps: tuple[TraceStep, ...]
    deliveries: tuple[DeliveryRow, ...]


@dataclass(frozen=True, slots=True)
class QueueSelection:
    """Which deliveries a queue operation (``mailflow queue …``) applies to: every given
    criterion must hold.  ``ids`` are delivery ids; ``queue_ids`` message queue ids."""

    statuses: tuple[DeliveryStatus, ...] = ()
    list_address: str | None = None
    domain: str | None = None
    created_before: float | None = None
    ids: tuple[int, ...] = ()
    queue_ids: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.statuses or self.list_address or self.domain
                    or self.created_before is not None or self.ids or self.queue_ids)


@dataclass(frozen=True, slots=True)
class QueueChange:
    """What a queue operation did: deliveries changed, and those it matched but left
    alone (in flight under a live lease, or in a state the operation does not apply to)."""

    changed: int
    skipped: int


@dataclass(frozen=True, slots=True)
class RecipientReply:
    recipient: str
    code: int
    text: str
    # The provider's own id of the copy (Amazon SES's MessageId), kept on the delivery so
    # the provider's later bounce or complaint about it finds it; "" when it has none.
    provider_id: str = ""

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


class FeedbackKind(enum.StrEnum):
    """What an egress provider later says about a copy it took (Amazon SES's
    ``notificationType``, lower-cased)."""

    BOUNCE = "bounce"
    COMPLAINT = "complaint"
    DELIVERY = "delivery"


@dataclass(frozen=True, slots=True)
class ProviderFeedback:
    """One recipient's part of a provider's notification about a sent copy.

    ``fails`` says the delivery is failed for good (a permanent bounce): a copy the
    provider took (250) that the destination then refused.
    """

    recipient: str
    kind: FeedbackKind
    detail: str
    fails: bool = False


@dataclass(frozen=True, slots=True)
class SentCopy:
    """A delivery found by its provider's id: what a feedback hook needs to act on it."""

    delivery_id: int
    message_id: str
    list_id: int
    recipient: str
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
