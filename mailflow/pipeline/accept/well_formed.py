"""Is this a message at all?  In the chain for submissions without an SMTP conversation.

SMTP peers are trusted to speak RFC 5322 (the relay forwards what it gets, byte for byte);
submissions without one (HTTP, ``mailflow pipe``) are checked here so a wrong file or an
empty body is refused with a clear reason instead of being relayed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mailflow.errors import MalformedMessage
from mailflow.pipeline.context import Decision, MessageContext, Recipient, for_all

FIELD = re.compile(rb"^[\x21-\x39\x3b-\x7e]+[ \t]*:")
MBOX_FROM = b"From "


def check_well_formed(raw: bytes, header: bytes) -> None:
    """Refuse empty input and input that does not open with a header section."""
    if not raw.strip():
        raise MalformedMessage("empty message")
    if b"\0" in header:
        raise MalformedMessage("NUL byte in the header section")
    lines = header.splitlines()
    if lines and lines[0].startswith(MBOX_FROM):
        lines = lines[1:]  # an mbox "From " line, as some pipes prepend
    if not lines or not FIELD.match(lines[0]):
        raise MalformedMessage("the message does not start with a header field")
    for number, line in enumerate(lines, start=1):
        if line[:1] not in (b" ", b"\t") and not FIELD.match(line):
            raise MalformedMessage(f"header line {number} is neither a field nor a "
                                   "continuation")


def without_mbox_from(raw: bytes) -> bytes:
    """Drop a leading mbox ``From `` line (not a header field; some pipes prepend it)."""
    if raw.startswith(MBOX_FROM):
        end = raw.find(b"\n")
        return raw[end + 1:] if end >= 0 else b""
    return raw


@dataclass(frozen=True, slots=True)
class WellFormed:

    async def __call__(self, ctx: MessageContext, pending: Sequence[Recipient]
                       ) -> Mapping[str, Decision]:
        try:
            check_well_formed(ctx.raw, ctx.header)
        except MalformedMessage as error:
            return for_all(pending, Decision.reject(error))
        return {}
