"""Is this a message at all?

Submissions without an SMTP conversation (HTTP, ``mailflow pipe``) get the full check
(:class:`WellFormed`), so a wrong file or an empty body is refused with a clear reason
instead of being relayed.  SMTP/LMTP peers are trusted to speak RFC 5322 (the relay
forwards what it gets, byte for byte), but the fields the relay adds in front of the
header section must stay a header section: :class:`Framed` refuses an empty message,
a NUL byte in the header section, and a message whose first line is not a header field
(body lines first, or a blank line first), all with ``554 5.6.0``.  Its cost is one
scan of the header bytes and one regular expression on the first line, whatever the
size of the message.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping, Sequence

from mailflow.errors import MalformedMessage
from mailflow.pipeline.context import Decision, MessageContext, Recipient, for_all

FIELD = re.compile(rb"^[\x21-\x39\x3b-\x7e]+[ \t]*:")
MBOX_FROM = b"From "


def _check_content(raw: bytes, header: bytes) -> None:
    if not raw or raw.isspace():
        raise MalformedMessage("empty message")
    if b"\0" in header:
        raise MalformedMessage("NUL byte in the header section")


def check_framed(raw: bytes, header: bytes) -> None:
    """Refuse an empty message, NUL in the header, or a first line that is no field.

    ``FIELD`` stops at the first character that is not a field name's, so matching it at
    the start of ``header`` looks at the first line only.
    """
    _check_content(raw, header)
    if not FIELD.match(header):
        raise MalformedMessage("the message does not start with a header field")


def check_well_formed(raw: bytes, header: bytes) -> None:
    """Refuse empty input and input that does not open with a header section."""
    _check_content(raw, header)
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


class _WholeMessageCheck(abc.ABC):
    """A check of the whole message: it refuses every recipient, or none."""

    __slots__ = ()

    @abc.abstractmethod
    def check(self, raw: bytes, header: bytes) -> None:
        """Raise :class:`MalformedMessage` if the message fails the check."""

    async def __call__(self, ctx: MessageContext, pending: Sequence[Recipient]
                       ) -> Mapping[str, Decision]:
        try:
            self.check(ctx.raw, ctx.header)
        except MalformedMessage as error:
            return for_all(pending, Decision.reject(error))
        return {}


class WellFormed(_WholeMessageCheck):
    """The HTTP/pipe check: every header line a field or a continuation."""

    __slots__ = ()

    def check(self, raw: bytes, header: bytes) -> None:
        check_well_formed(raw, header)


class Framed(_WholeMessageCheck):
    """The SMTP/LMTP check: a header section the relay's own fields can precede."""

    __slots__ = ()

    def check(self, raw: bytes, header: bytes) -> None:
        check_framed(raw, header)
