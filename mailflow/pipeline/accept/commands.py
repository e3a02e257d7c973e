"""What an SMTP/LMTP client says before DATA, refused at the command that says it.

The HELO name goes into the ``Received`` field of every copy, so a name with a control
character (a bare CR would start a header field of the client's choosing) or with
invalid UTF-8 is refused at HELO, and the client may greet again.  Envelope addresses
that are not text (invalid UTF-8, which aiosmtpd decodes to lone surrogates) cannot be
looked up or stored: refusing them at MAIL/RCPT gives the sending MTA a permanent
reply instead of a temporary one it would retry for days.  :mod:`.envelope` still
checks the same at DATA for the ingresses without an SMTP conversation.
"""

from __future__ import annotations

from mailflow import headers
from mailflow.errors import InvalidHelo, InvalidRecipientAddress, InvalidSender
from mailflow.pipeline.accept.envelope import is_text


def check_helo(name: str) -> None:
    """Refuse a HELO/EHLO/LHLO name that could not be written into a header field."""
    problem = headers.unsafe_text(name)
    if problem is not None:
        raise InvalidHelo(f"the HELO name {problem}; greet again with a valid host name")


def check_sender(address: str) -> None:
    if not is_text(address):
        raise InvalidSender("the sender address is not valid UTF-8")


def check_recipient_address(address: str) -> None:
    if not is_text(address):
        raise InvalidRecipientAddress("the recipient address is not valid UTF-8")
