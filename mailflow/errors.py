"""The error tree: one root, and temporary versus permanent said by type.

::

    MailflowError
    ├── ConfigurationError        settings that cannot work; the process does not start
    ├── NotFound                  a domain, list or member named by a user does not exist
    ├── Conflict                  it exists already, or something still depends on it
    ├── InvalidInput              an address, file or value a user gave is malformed
    └── SmtpReplyError            maps onto one SMTP reply (code, enhanced status, reason)
        ├── TemporaryFailure      retry later: SMTP 4xx, HTTP 503, pipe exit 75
        │   ├── StorageUnavailable    451 4.3.0: the message could not be made durable
        │   └── EgressUnavailable     the next hop cannot be reached
        └── PermanentFailure      do not retry: SMTP 5xx, HTTP 422
            ├── UnknownDomain         550 5.7.1: not one of our domains (no open relay)
            ├── UnknownRecipient      550 5.1.1: our domain, no such list or alias
            ├── MessageTooLarge       552 5.3.4
            ├── MalformedMessage      554 5.6.0: no header section (HTTP 400, pipe exit 65)
            ├── NoRecipients          554 5.5.1: an HTTP or pipe submission without any
            └── LoopDetected          554 5.4.6: our own loop marker, or too many hops

Ingress adapters turn these into protocol replies with :meth:`SmtpReplyError.smtp_reply`;
third-party exceptions are translated at the adapter edge and never leak upwards.
"""

from __future__ import annotations


class MailflowError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigurationError(MailflowError):
    """The settings are invalid; the message says which and how to fix them."""


class NotFound(MailflowError):
    """A named object (domain, list, member) does not exist."""


class Conflict(MailflowError):
    """The object exists already, or others still depend on it."""


class InvalidInput(MailflowError):
    """User input (an address, a CSV row, a value) is malformed."""


class SmtpReplyError(MailflowError):
    """An error that maps onto one SMTP reply: basic code, enhanced status, reason."""

    code: int = 451
    enhanced: str = "4.3.0"
    default_reason: str = "temporary failure, try again later"

    def __init__(self, reason: str | None = None) -> None:
        self.reason = reason or self.default_reason
        super().__init__(self.reason)

    def smtp_reply(self) -> str:
        return f"{self.code} {self.enhanced} {self.reason}"


class TemporaryFailure(SmtpReplyError):
    """The sender should try again later; nothing was accepted."""


class StorageUnavailable(TemporaryFailure):
    code, enhanced = 451, "4.3.0"
    default_reason = "cannot store the message right now, try again later"


class EgressUnavailable(TemporaryFailure):
    code, enhanced = 451, "4.4.1"
    default_reason = "next hop unavailable"


class PermanentFailure(SmtpReplyError):
    """The sender must not retry the same thing."""

    code, enhanced = 554, "5.0.0"
    default_reason = "rejected"


class UnknownDomain(PermanentFailure):
    code, enhanced = 550, "5.7.1"
    default_reason = "relaying denied: not a domain of this relay"


class UnknownRecipient(PermanentFailure):
    code, enhanced = 550, "5.1.1"
    default_reason = "no such list or alias here"


class MessageTooLarge(PermanentFailure):
    code, enhanced = 552, "5.3.4"
    default_reason = "message too large"


class MalformedMessage(PermanentFailure):
    code, enhanced = 554, "5.6.0"
    default_reason = "malformed message"


class NoRecipients(PermanentFailure):
    code, enhanced = 554, "5.5.1"
    default_reason = "no valid recipients"


class LoopDetected(PermanentFailure):
    code, enhanced = 554, "5.4.6"
    default_reason = "mail loop detected"
