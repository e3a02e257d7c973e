"""A MIME entity cut at its boundaries, so one part can change and every other byte stays.

Decoration changes one text part of a message and must leave every attachment exactly
as received (its transfer encoding, its line lengths, its signature): so a multipart
body is cut into its exact pieces (preamble, delimiter lines, parts, epilogue), a part
is replaced, and the pieces are joined again.  Nothing is re-serialized by the email
package.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Final

from mailflow import headers


@dataclass(frozen=True, slots=True)
class Entity:
    """One MIME entity's header section, its body, and what its Content-* fields say."""

    header: bytes       # including its final line break ('' for a part without fields)
    separator: bytes    # the blank line between header and body
    body: bytes
    content_type: str   # lower case; text/plain when absent (RFC 2045)
    charset: str        # lower case; '' when absent
    encoding: str       # Content-Transfer-Encoding, lower case; 7bit when absent
    boundary: str       # of a multipart, '' otherwise
    attachment: bool    # Content-Disposition: attachment

    @property
    def newline(self) -> bytes:
        return b"\r\n" if (self.separator or self.header).endswith(b"\r\n") else b"\n"

    def with_body(self, body: bytes) -> bytes:
        return self.header + self.separator + body


# What a header section's Content-* fields say, remembered for small sections: each
# member's copy of a personalized post reads the same ones (at most 64 x 8 KB).
FIELDS_KEPT: Final = 64
FIELDS_KEPT_MAX_HEADER: Final = 8 * 1024

_Fields = tuple[str, str, str, str, bool]  # content type, charset, encoding, boundary, att.


def entity(header: bytes, rest: bytes) -> Entity | None:
    """The entity of ``header`` and ``rest`` (blank line and body); None if its fields
    cannot be read."""
    separator = rest[:2] if rest.startswith(b"\r\n") else rest[:1] if rest.startswith(
        b"\n") else b""
    found = (_kept_fields(header) if len(header) <= FIELDS_KEPT_MAX_HEADER
             else _fields(header))
    if found is None:
        return None
    return Entity(header, separator, rest[len(separator):], *found)


def _fields(header: bytes) -> _Fields | None:
    try:
        # compat32: the Content-* parameters without the header registry's full parse,
        # which costs ten times more and is done for every part of every copy.
        fields: Message = BytesHeaderParser(policy=compat32).parsebytes(header)
        content_type = fields.get_content_type()
        charset = str(fields.get_param("charset", "") or "").lower()
        encoding = str(fields.get("content-transfer-encoding", "7bit")).strip().lower()
        boundary = fields.get_boundary("") if fields.get_content_maintype() == "multipart" \
            else ""
        attachment = fields.get_content_disposition() == "attachment"
    except Exception:  # a field the email package cannot parse: leave the entity alone
        return None
    return content_type, charset, encoding, boundary, attachment


_kept_fields = functools.lru_cache(maxsize=FIELDS_KEPT)(_fields)


def part_entity(part: bytes) -> Entity | None:
    """A part of a multipart (its own header section, blank line and body)."""
    if part.startswith((b"\r\n", b"\n")):  # no fields: text/plain, us-ascii
        return entity(b"", part)
    cut = headers.header_length(part)
    return entity(part[:cut], part[cut:])


@dataclass(slots=True)
class Multipart:
    """A multipart body as pieces: ``pieces[i]`` for odd ``i`` are the parts, the even
    ones are what surrounds them (preamble with the first delimiter line, delimiter lines,
    the closing delimiter with the epilogue), so ``b"".join(pieces)`` is the body."""

    pieces: list[bytes]

    @property
    def parts(self) -> list[bytes]:
        return self.pieces[1::2]

    def replace(self, index: int, part: bytes) -> None:
        self.pieces[2 * index + 1] = part

    def insert(self, index: int, part: bytes, newline: bytes, boundary: str) -> None:
        """A new part before part ``index`` (``len(parts)``: after the last one)."""
        delimiter = newline + b"--" + boundary.encode() + newline
        if index < len(self.parts):
            self.pieces[2 * index + 1:2 * index + 1] = [part, delimiter]
        else:
            self.pieces[-1:-1] = [delimiter, part]

    def joined(self) -> bytes:
        return b"".join(self.pieces)


def split(body: bytes, boundary: str) -> Multipart | None:
    """``body`` cut at ``boundary``; None without parts or a closing delimiter line.

    RFC 2046: the line break before a delimiter line belongs to it, not to the part.
    """
    if not boundary or not boundary.isascii():
        return None
    delimiter = re.compile(rb"(?:\r?\n|\A)--" + re.escape(boundary.encode())
                           + rb"(--)?[ \t]*(?:\r?\n|\Z)")
    pieces: list[bytes] = []
    start = 0          # where the current surrounding piece began
    part_start: int | None = None
    for match in delimiter.finditer(body):
        if part_start is not None:
            pieces.append(body[part_start:match.start()])
            start = match.start()
        if match.group(1):
            if not pieces:
                return None
            pieces.append(body[start:])
            return Multipart(pieces)
        pieces.append(body[start:match.end()])
        part_start = match.end()
    return None
