"""Refuse envelope addresses that are not text: invalid UTF-8 from the client.

aiosmtpd (with SMTPUTF8) and the command line of ``mailflow pipe`` decode invalid UTF-8
to lone surrogates.  Such a string cannot be encoded, so it cannot be stored: the ingest
transaction carrying it would fail, and with it every other message of the same group
commit, again at each retry.  A sender like that refuses the message; a recipient like
that refuses its own copy (an SMTP client never gets that far: RCPT finds no such list).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mailflow.errors import MalformedMessage
from mailflow.pipeline.context import Decision, MessageContext, Recipient, for_all


def is_text(value: str) -> bool:
    """Whether ``value`` encodes as UTF-8 (no lone surrogates)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class EnvelopeText:

    async def __call__(self, ctx: MessageContext, pending: Sequence[Recipient]
                       ) -> Mapping[str, Decision]:
        if not is_text(ctx.envelope.mail_from):
            return for_all(pending, Decision.reject(MalformedMessage(
                "the envelope sender is not valid UTF-8")))
        return {r.canonical: Decision.reject(MalformedMessage(
                    "the recipient address is not valid UTF-8"))
                for r in pending if not is_text(r.canonical)}
