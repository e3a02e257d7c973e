"""Every message between the relay and its child process, in both directions.

One frozen dataclass per kind, matched by type on each side (never by position).  Errors
travel as a :class:`Failure` (the error's key and its reason), never as a pickled
exception, and are rebuilt on the other side.  How they cross the socketpair is
:mod:`mailflow.child.channel`'s business.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

from mailflow import errors
from mailflow.errors import SmtpReplyError
from mailflow.ingress.limits import SessionLimits
from mailflow.memory import DEFAULT_BUDGET
from mailflow.model import Envelope, RecipientReply, Verdict
from mailflow.smtp_relay import SmtpRelay

# -- errors --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Failure:
    """An error that answers a question: which error (``key``) and why (``reason``).

    The key is the error's stable key in :data:`mailflow.errors.TABLE`; an unknown key
    is rebuilt as a temporary failure (451 4.3.0), never lost.
    """

    key: str
    reason: str

    @classmethod
    def of(cls, error: SmtpReplyError) -> Failure:
        return cls(errors.error_key(error), error.reason)

    def error(self) -> SmtpReplyError:
        return errors.error_from_key(self.key, self.reason)


# -- what the child needs to start ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SmtpEgressSpec:
    """An :class:`~mailflow.egress.smtp.SmtpEgress` the child runs.

    ``payload_cache`` is its share of ``cache_memory`` in bytes (the child has no
    settings).
    """

    relay: SmtpRelay
    pool_size: int
    timeout: float
    idle_check: float
    local_hostname: str | None = None
    transaction_timeout: float = 600.0
    payload_cache: int = DEFAULT_BUDGET.payloads


EgressSpec: TypeAlias = SmtpEgressSpec  # a union once routes bring LMTP and others


@dataclass(frozen=True, slots=True)
class ListenSocket:
    """A listening socket the relay bound, passed to the child by file descriptor."""

    fd: int
    lmtp: bool


@dataclass(frozen=True, slots=True)
class TlsSpec:
    """STARTTLS on the SMTP sockets: the PEM files the child reads (at start and on
    :class:`ReloadTls`), and whether MAIL needs TLS first."""

    cert_file: str
    key_file: str
    require: bool


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    """The SMTP/LMTP listeners the child serves, asking the relay about everything."""

    sockets: tuple[ListenSocket, ...]
    hostname: str
    max_message_size: int
    recipient_cache_ttl: float
    limits: SessionLimits
    tls: TlsSpec | None = None


@dataclass(frozen=True, slots=True)
class ChildConfig:
    """The first message to a new child: what it runs (egresses by name, listeners)."""

    egresses: Mapping[str, EgressSpec]
    listeners: ListenerSpec | None
    log_level: str = "INFO"
    log_format: str = "text"  # or "json" (``mailflow.logs``)


# -- relay -> child ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Send:
    """One transaction through the egress ``egress``.

    ``content`` is None when the child keeps it already under ``content_key``; a
    ``content_key`` of 0 asks the child not to keep the content at all.
    """

    number: int
    egress: str
    content_key: int
    content: bytes | None
    mail_from: str
    recipients: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Forget:
    """Contents the child may drop (the relay decides what the child keeps)."""

    content_keys: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RecipientChecked:
    """Answer to :class:`CheckRecipient`: ``known`` says whether the child may remember
    it (a Resolution would make the child import the store to read it); ``any_sender``
    whether that holds for every sender (no sender entries exist), else only for the
    sender asked about."""

    number: int
    known: bool
    any_sender: bool = True


@dataclass(frozen=True, slots=True)
class Accepted:
    """Answer to :class:`Accept`: stored, with this queue id."""

    number: int
    message_id: str


@dataclass(frozen=True, slots=True)
class RecipientVerdict:
    """One recipient's answer to :class:`AcceptEach`."""

    recipient: str
    message_id: str | None
    failure: Failure | None

    @classmethod
    def of(cls, verdict: Verdict) -> RecipientVerdict:
        failure = Failure.of(verdict.error) if verdict.error is not None else None
        return cls(verdict.recipient, verdict.message_id, failure)

    def verdict(self) -> Verdict:
        error = self.failure.error() if self.failure is not None else None
        return Verdict(self.recipient, error, self.message_id)


@dataclass(frozen=True, slots=True)
class AcceptedEach:
    """Answer to :class:`AcceptEach`: one verdict per recipient."""

    number: int
    verdicts: tuple[RecipientVerdict, ...]


@dataclass(frozen=True, slots=True)
class Refused:
    """Answer to any question of the child: the error to reply with."""

    number: int
    failure: Failure


@dataclass(frozen=True, slots=True)
class CloseListeners:
    """Stop listening; sessions get ``grace`` seconds (the egresses go on)."""

    grace: float


@dataclass(frozen=True, slots=True)
class ReloadTls:
    """SIGHUP reached the relay: read the certificate files again (answer: :class:`TlsReloaded`)."""

    number: int


@dataclass(frozen=True, slots=True)
class Close:
    """Finish what is under way and exit."""


# -- child -> relay ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Ready:
    """The child serves what :class:`ChildConfig` asked for."""

    pid: int


@dataclass(frozen=True, slots=True)
class StartFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class Replies:
    """Answer to :class:`Send`: one reply per recipient."""

    number: int
    replies: tuple[RecipientReply, ...]


@dataclass(frozen=True, slots=True)
class Unavailable:
    """Answer to :class:`Send`: the egress could not take the transaction."""

    number: int
    reason: str


@dataclass(frozen=True, slots=True)
class CheckRecipient:
    """RCPT TO in a session of the child: does the relay know the address, and does it
    take mail from the transaction's sender for it?"""

    number: int
    address: str
    sender: str = ""


@dataclass(frozen=True, slots=True)
class Accept:
    """After DATA (SMTP): store the message, all or nothing."""

    number: int
    envelope: Envelope
    raw: bytes


@dataclass(frozen=True, slots=True)
class AcceptEach:
    """After DATA (LMTP): store the message for the recipients that may have it."""

    number: int
    envelope: Envelope
    raw: bytes


@dataclass(frozen=True, slots=True)
class ListenersClosed:
    """Answer to :class:`CloseListeners`: the child's sessions are over."""


@dataclass(frozen=True, slots=True)
class TlsReloaded:
    """Answer to :class:`ReloadTls`: the fingerprint now served, or why the old
    certificate stays (``error``)."""

    number: int
    fingerprint: str | None
    error: str | None


ToChild: TypeAlias = (ChildConfig | Send | Forget | RecipientChecked | Accepted | AcceptedEach
                      | Refused | CloseListeners | Close | ReloadTls)
ToRelay: TypeAlias = (Ready | StartFailed | Replies | Unavailable | CheckRecipient | Accept
                      | AcceptEach | ListenersClosed | TlsReloaded)
Answer: TypeAlias = RecipientChecked | Accepted | AcceptedEach | Refused
Question: TypeAlias = CheckRecipient | Accept | AcceptEach

# Every message, both directions: a message's position here is its tag on the wire.
MESSAGES: tuple[type, ...] = (
    ChildConfig, Send, Forget, RecipientChecked, Accepted, AcceptedEach, Refused,
    CloseListeners, Close, Ready, StartFailed, Replies, Unavailable, CheckRecipient, Accept,
    AcceptEach, ListenersClosed, ReloadTls, TlsReloaded)
