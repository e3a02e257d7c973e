"""The error tree, and the one table that says what each error means to every adapter.

::

    MailflowError
    ├── ConfigurationError        settings that cannot work; the process does not start
    ├── NotFound                  a domain, list or member named by a user does not exist
    ├── Conflict                  it exists already, or something still depends on it
    ├── InvalidInput              an address, file or value a user gave is malformed
    │   └── ConfirmationNeeded    an action on many objects that must be confirmed
    ├── Unauthenticated           no credentials, or wrong ones (API token, password)
    ├── Forbidden                 known, but not allowed to do this (role, token scope)
    ├── TooManyAttempts           too many failed logins: wait before the next
    └── SmtpReplyError            refuses a message: maps onto one SMTP reply
        ├── TemporaryFailure      retry later
        │   ├── StorageUnavailable    the message could not be made durable
        │   ├── EgressUnavailable     the next hop cannot be reached
        │   └── InputTimeout          the client did not send its input in time
        └── PermanentFailure      do not retry
            ├── UnknownDomain         not one of our domains (no open relay)
            ├── UnknownRecipient      our domain, no such list or alias
            ├── MessageTooLarge
            ├── MalformedMessage      not a message at all (no header section, NUL bytes)
            ├── NoRecipients          an HTTP or pipe submission without any
            ├── InvalidHelo           a HELO/EHLO/LHLO name that cannot go into a header
            ├── InvalidSender         a MAIL FROM address that is not text (invalid UTF-8)
            ├── InvalidRecipientAddress   a RCPT TO address that is not text
            ├── SenderBlocked         a block entry covers the sender for the recipient(s)
            ├── FilterRejected        a filter rule of a list or alias refuses the message
            ├── PostingRefused        a list's posting policy does not admit the sender
            └── LoopDetected          our own loop marker, or too many hops

An error says *what* went wrong in plain words and structured fields, never *how* a
protocol or a command shows it: no reply codes in messages, no ``see `mailflow …```
hints.  Each adapter (SMTP/LMTP replies, HTTP problem details, the exit status of a
command or of ``mailflow pipe``, Postfix policy answers) translates through
:data:`TABLE`, the only place that knows the codes.  Errors cross the process boundary
to the relay's child as a stable :attr:`ErrorSpec.key` plus their reason
(:func:`error_from_key`), never pickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final, Literal

# sysexits.h: what a mail server's pipe transport reads from ``mailflow pipe``.
EX_OK: Final = 0
EX_DATAERR: Final = 65
EX_NOUSER: Final = 67
EX_TEMPFAIL: Final = 75

PolicyAction = Literal["REJECT", "DEFER_IF_PERMIT", "DUNNO"]


class MailflowError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigurationError(MailflowError):
    """The settings are invalid; the message says which and how to fix them."""


# What kind of object a NotFound or Conflict is about, and how a sentence names it.
ObjectKind = Literal["domain", "list", "member", "rule", "filter", "message", "suppression",
                     "dkim", "user", "token", "autoreply"]
KIND_WORDS: Final[dict[str, str]] = {
    "domain": "domain", "list": "list or alias", "member": "member",
    "rule": "block or allow entry", "filter": "filter rule", "message": "held message",
    "suppression": "suppression", "dkim": "DKIM key of", "user": "user",
    "token": "API token", "autoreply": "auto-reply"}


class NotFound(MailflowError):
    """A named object (domain, list or alias, member) does not exist.

    ``kind`` and ``name`` let an adapter point the user at the way out (the CLI names a
    command, an API a link); the message only says what is missing.
    """

    def __init__(self, kind: ObjectKind, name: str, message: str | None = None) -> None:
        self.kind: ObjectKind = kind
        self.name = name
        super().__init__(message or f"no {KIND_WORDS[kind]} {name}")

    def __reduce__(self) -> tuple[type[NotFound], tuple[str, str, str], dict[str, object]]:
        return type(self), (self.kind, self.name, str(self)), self.__dict__


class Conflict(MailflowError):
    """The object exists already, or others still depend on it (``dependents`` > 0)."""

    def __init__(self, kind: ObjectKind, name: str, message: str | None = None, *,
                 dependents: int = 0) -> None:
        self.kind: ObjectKind = kind
        self.name = name
        self.dependents = dependents
        super().__init__(message or f"{name} exists already")

    def __reduce__(self) -> tuple[type[Conflict], tuple[str, str, str], dict[str, object]]:
        return type(self), (self.kind, self.name, str(self)), self.__dict__


class InvalidInput(MailflowError):
    """User input (an address, a CSV row, a value) is malformed."""


class ConfirmationNeeded(InvalidInput):
    """An action on ``count`` objects (a queue delete of more than one delivery) not
    confirmed; each adapter says how to confirm (``--yes``, ``confirm: true``)."""

    def __init__(self, count: int, message: str) -> None:
        super().__init__(message)
        self.count = count


class Unauthenticated(MailflowError):
    """The request carries no credentials, or ones that match nobody."""


class Forbidden(MailflowError):
    """The caller is known but may not do this: not their list, or a read-only token."""


class TooManyAttempts(MailflowError):
    """Too many failed logins for an account or from a client: ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class SmtpReplyError(MailflowError):
    """An error that refuses (part of) a message: one SMTP reply, from :data:`TABLE`.

    ``code`` and ``enhanced`` are read from the table when this module loads; they are
    here for callers that label metrics with them.
    """

    code: ClassVar[int]
    enhanced: ClassVar[str]
    default_reason: ClassVar[str] = "temporary failure, try again later"

    def __init__(self, reason: str | None = None) -> None:
        self.reason = reason or self.default_reason
        super().__init__(self.reason)

    def smtp_reply(self) -> str:
        return smtp_reply(self)


class TemporaryFailure(SmtpReplyError):
    """The sender should try again later; nothing was accepted."""


class StorageUnavailable(TemporaryFailure):
    default_reason = "cannot store the message right now, try again later"


class EgressUnavailable(TemporaryFailure):
    default_reason = "next hop unavailable"


class InputTimeout(TemporaryFailure):
    """The client's input stopped coming (a slow or endless body): cut, nothing stored.

    Temporary: a sender whose link stalled may well get through on its next try.
    """

    default_reason = "the message did not arrive in time"


class PermanentFailure(SmtpReplyError):
    """The sender must not retry the same thing."""

    default_reason = "rejected"


class UnknownDomain(PermanentFailure):
    default_reason = "relaying denied: not a domain of this relay"


class UnknownRecipient(PermanentFailure):
    default_reason = "no such list or alias here"


class InvalidSrsAddress(PermanentFailure):
    """A bounce address of ours (SRS0=/SRS1=) that is forged, expired or malformed."""

    default_reason = "not a valid bounce address here"


class MessageTooLarge(PermanentFailure):
    default_reason = "message too large"


class MalformedMessage(PermanentFailure):
    default_reason = "malformed message"


class NoRecipients(PermanentFailure):
    default_reason = "no valid recipients"


class InvalidHelo(PermanentFailure):
    default_reason = "invalid HELO name"


class InvalidSender(PermanentFailure):
    default_reason = "invalid sender address"


class InvalidRecipientAddress(PermanentFailure):
    default_reason = "invalid recipient address"


class SenderBlocked(PermanentFailure):
    default_reason = "sender blocked"


class FilterRejected(PermanentFailure):
    default_reason = "refused by a filter rule"


class PostingRefused(PermanentFailure):
    default_reason = "not allowed to post to this list"


class LoopDetected(PermanentFailure):
    default_reason = "mail loop detected"


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """What one error type means to each adapter."""

    key: str             # stable name: logs, metrics, frames to the child, API clients
    smtp_code: int       # SMTP/LMTP basic reply code
    enhanced: str        # RFC 3463 enhanced status code
    http_status: int     # HTTP status of its problem details
    title: str           # short human label (a problem's ``title``)
    sysexit: int         # exit status of ``mailflow pipe`` (sysexits.h)
    cli_exit: int        # exit status of the management commands (docs/cli.md)
    policy: PolicyAction  # Postfix policy delegation answer


def _spec(key: str, smtp: str, http: int, title: str, sysexit: int, cli_exit: int,
          policy: PolicyAction) -> ErrorSpec:
    code, enhanced = smtp.split()
    return ErrorSpec(key, int(code), enhanced, http, title, sysexit, cli_exit, policy)


#: Every error type and what it becomes; a subclass not listed takes its nearest
#: listed ancestor's row.
TABLE: Final[dict[type[MailflowError], ErrorSpec]] = {
    MailflowError: _spec("internal_error", "451 4.3.0", 500, "Internal error",
                         EX_TEMPFAIL, 1, "DEFER_IF_PERMIT"),
    ConfigurationError: _spec("configuration_error", "451 4.3.5", 500, "Configuration error",
                              EX_TEMPFAIL, 1, "DEFER_IF_PERMIT"),
    NotFound: _spec("not_found", "550 5.1.1", 404, "Not found",
                    EX_NOUSER, 3, "REJECT"),
    Conflict: _spec("conflict", "554 5.0.0", 409, "Conflict",
                    EX_DATAERR, 4, "REJECT"),
    InvalidInput: _spec("invalid_input", "501 5.5.4", 422, "Invalid input",
                        EX_DATAERR, 2, "REJECT"),
    ConfirmationNeeded: _spec("confirmation_needed", "501 5.5.4", 422,
                              "Confirmation needed", EX_DATAERR, 2, "REJECT"),
    Unauthenticated: _spec("unauthenticated", "535 5.7.8", 401, "Unauthorized",
                           EX_DATAERR, 1, "REJECT"),
    Forbidden: _spec("forbidden", "550 5.7.1", 403, "Forbidden",
                     EX_DATAERR, 1, "REJECT"),
    TooManyAttempts: _spec("too_many_attempts", "454 4.7.0", 429, "Too many attempts",
                           EX_TEMPFAIL, 1, "DEFER_IF_PERMIT"),
    SmtpReplyError: _spec("temporary_failure", "451 4.3.0", 503, "Try again later",
                          EX_TEMPFAIL, 1, "DEFER_IF_PERMIT"),
    TemporaryFailure: _spec("temporary_failure", "451 4.3.0", 503, "Try again later",
                            EX_TEMPFAIL, 1, "DEFER_IF_PERMIT"),
    StorageUnavailable: _spec("storage_unavailable", "451 4.3.0", 503, "Try again later",
                              EX_TEMPFAIL, 1, "DEFER_IF_PERMIT"),
    EgressUnavailable: _spec("egress_unavailable", "451 4.4.1", 503, "Try again later",
                             EX_TEMPFAIL, 1, "DEFER_IF_PERMIT"),
    InputTimeout: _spec("input_timeout", "421 4.4.2", 408, "Request timeout",
                        EX_TEMPFAIL, 1, "DEFER_IF_PERMIT"),
    PermanentFailure: _spec("rejected", "554 5.0.0", 422, "Refused",
                            EX_DATAERR, 1, "REJECT"),
    # Not ours to judge: the same Postfix may serve other domains' mailboxes.
    UnknownDomain: _spec("unknown_domain", "550 5.7.1", 422, "Refused",
                         EX_NOUSER, 1, "DUNNO"),
    UnknownRecipient: _spec("unknown_recipient", "550 5.1.1", 422, "Refused",
                            EX_NOUSER, 1, "REJECT"),
    InvalidSrsAddress: _spec("invalid_srs_address", "550 5.1.7", 422, "Refused",
                             EX_NOUSER, 1, "REJECT"),
    MessageTooLarge: _spec("message_too_large", "552 5.3.4", 413, "Message too large",
                           EX_DATAERR, 1, "REJECT"),
    MalformedMessage: _spec("malformed_message", "554 5.6.0", 400, "Bad message",
                            EX_DATAERR, 1, "REJECT"),
    NoRecipients: _spec("no_recipients", "554 5.5.1", 400, "Bad message",
                        EX_DATAERR, 1, "REJECT"),
    InvalidHelo: _spec("invalid_helo", "501 5.5.2", 400, "Bad command",
                       EX_DATAERR, 1, "REJECT"),
    InvalidSender: _spec("invalid_sender", "553 5.1.7", 400, "Bad address",
                         EX_DATAERR, 1, "REJECT"),
    InvalidRecipientAddress: _spec("invalid_recipient_address", "501 5.1.3", 400, "Bad address",
                                   EX_DATAERR, 1, "REJECT"),
    # 67 as for the other 5.7.1 refusal: ``mailflow pipe --url`` maps the enhanced
    # status of a relay's 422 back through this table and must land on the same status.
    SenderBlocked: _spec("sender_blocked", "550 5.7.1", 422, "Refused",
                         EX_NOUSER, 1, "REJECT"),
    FilterRejected: _spec("filter_rejected", "550 5.7.1", 422, "Refused",
                          EX_NOUSER, 1, "REJECT"),
    PostingRefused: _spec("posting_refused", "550 5.7.1", 422, "Refused",
                          EX_NOUSER, 1, "REJECT"),
    LoopDetected: _spec("loop_detected", "554 5.4.6", 422, "Refused",
                        EX_DATAERR, 1, "REJECT"),
}

_BY_TYPE: dict[type[BaseException], ErrorSpec] = {cls: row for cls, row in TABLE.items()}
_BY_KEY: Final[dict[str, type[MailflowError]]] = {}
for _cls, _row in TABLE.items():
    _BY_KEY[_row.key] = _cls  # a key two rows share names the one listed last
    if issubclass(_cls, SmtpReplyError):
        _cls.code, _cls.enhanced = _row.smtp_code, _row.enhanced


def spec(error: BaseException | type[BaseException]) -> ErrorSpec:
    """The table row of an error (instance or type); anything else is an internal error."""
    kind = error if isinstance(error, type) else type(error)
    found = _BY_TYPE.get(kind)
    if found is None:
        base = next((c for c in kind.__mro__ if c in TABLE), MailflowError)
        found = _BY_TYPE[kind] = TABLE[base]
    return found


def smtp_reply(error: SmtpReplyError) -> str:
    """The SMTP/LMTP reply line: ``550 5.1.1 no list or alias <x@y> here``."""
    row = spec(error)
    return f"{row.smtp_code} {row.enhanced} {error.reason}"


def recipient_reply(error: SmtpReplyError) -> tuple[int, str]:
    """(code, text) of the reply one recipient gets when ``error`` stops its transaction.

    For the scheduler and a routed egress: ``RecipientReply(rcpt, *recipient_reply(
    EgressUnavailable(...)))`` records ``451 4.4.1 <reason>`` instead of a made-up string.
    """
    row = spec(error)
    return row.smtp_code, f"{row.enhanced} {error.reason}"


def status_line(error: SmtpReplyError) -> str:
    """Enhanced status and reason, as ``mailflow pipe`` prints them: ``5.1.1 no list …``."""
    return f"{spec(error).enhanced} {error.reason}"


def policy_answer(error: SmtpReplyError) -> str:
    """The ``action=`` value of a Postfix policy answer for a refused recipient."""
    row = spec(error)
    if row.policy == "DUNNO":
        return "DUNNO"
    return f"{row.policy} {row.enhanced} {error.reason}"


def error_key(error: BaseException) -> str:
    return spec(error).key


def error_class(key: str) -> type[MailflowError]:
    """The error type a key names."""
    try:
        return _BY_KEY[key]
    except KeyError:
        raise KeyError(f"no error is called {key!r}") from None


def error_from_key(key: str, reason: str) -> SmtpReplyError:
    """Rebuild a refusal sent as key + reason (from the relay's child, or to it).

    A key that names no refusal (a newer peer, a bug) becomes a temporary failure: the
    sender retries rather than losing mail over it.
    """
    cls = _BY_KEY.get(key)
    if cls is None or not issubclass(cls, SmtpReplyError):
        return TemporaryFailure(reason)
    return cls(reason)


def spec_for_enhanced(enhanced: str) -> ErrorSpec | None:
    """The row of a refusal by its enhanced status (a relay's problem details carry it)."""
    for cls, row in TABLE.items():
        if issubclass(cls, PermanentFailure) and row.enhanced == enhanced:
            return row
    return None
