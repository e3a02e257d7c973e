"""Byte-exact access to a message's header section.

The relay promises that a relayed body is byte-identical to what was received, so it never
re-serializes a message through ``email.generator``: it reads header fields from the raw
bytes and builds outbound messages by editing the header section only.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator
from email.header import Header
from email.utils import quote
from typing import Final

# Characters that must never reach a header field: controls (CR, LF, NUL, TAB, DEL, C1
# such as NEL), line and paragraph separators (some parsers end a line at a bare CR or
# at U+2028), and lone surrogates (what invalid UTF-8 from a client decodes to; they
# cannot be encoded, so neither written into a copy nor stored).
UNSAFE_CATEGORIES: Final = frozenset({"Cc", "Cs", "Zl", "Zp"})


def header_safe(text: str) -> str:
    """``text`` with every character of :data:`UNSAFE_CATEGORIES` replaced by ``?``.

    For values a client or a user chose (a HELO name, a list's display name) on their
    way into a header field.
    """
    if text.isprintable():  # the usual case: none of those categories is printable
        return text
    return "".join("?" if unicodedata.category(c) in UNSAFE_CATEGORIES else c for c in text)


def display_phrase(name: str) -> str:
    """A display name as a quoted string, or an RFC 2047 encoded word if not ASCII.

    Made safe first: names come from users (a list's name) or from messages (an
    author's name).
    """
    name = header_safe(name)
    if name.isascii():
        return f'"{quote(name)}"'
    return Header(name, "utf-8").encode()


def unsafe_text(text: str) -> str | None:
    """Why ``text`` must not go into a header field, or ``None`` if it may.

    For values a client chose that are refused rather than repaired (a HELO name): the
    reason names the first offending character, so the client's operator can find it.
    """
    if text.isprintable():
        return None
    for char in text:
        category = unicodedata.category(char)
        if category == "Cs":
            return "is not valid UTF-8"
        if category in UNSAFE_CATEGORIES:
            return f"contains the control character U+{ord(char):04X}"
    return None


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    """(header section including its final line break, the rest: blank line and body)."""
    cut = header_length(raw)
    return raw[:cut], raw[cut:]


def header_length(raw: bytes) -> int:
    """Where the header section ends (after its final line break): slicing there copies
    only the header, where :func:`split_message` copies the body too."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        index = raw.find(sep)
        if index >= 0:
            return index + len(sep) // 2
    return len(raw)


def iter_fields(header: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Yield (raw field including continuation lines, lower-cased name) in order."""
    current: list[bytes] = []
    name = b""
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and current:
            current.append(line)
            continue
        if current:
            yield b"".join(current), name
        current = [line]
        name = line.split(b":", 1)[0].strip().lower()
    if current:
        yield b"".join(current), name


def field_values(header: bytes, name: str) -> list[str]:
    """Unfolded values of every field called ``name`` (case-insensitive)."""
    wanted = name.lower().encode()
    return [unfolded_value(raw) for raw, field_name in iter_fields(header)
            if field_name == wanted]


def fields_by_name(header: bytes) -> dict[bytes, list[bytes]]:
    """Every field as :func:`iter_fields` yields it, by lower-cased name, in order: one
    pass over the header section for a caller that asks about many names."""
    found: dict[bytes, list[bytes]] = {}
    for raw, field_name in iter_fields(header):
        found.setdefault(field_name, []).append(raw)
    return found


def unfolded_value(field: bytes) -> str:
    """A field's value (after its colon) with its folding and runs of white space
    undone."""
    value = field.split(b":", 1)[1] if b":" in field else b""
    return b" ".join(value.split()).decode("utf-8", "replace")


def count_fields(header: bytes, name: str) -> int:
    wanted = name.lower().encode()
    return sum(1 for _, field_name in iter_fields(header) if field_name == wanted)


def without_fields(header: bytes, names: Iterable[str]) -> bytes:
    """The header section with every field called one of ``names`` removed."""
    unwanted = {n.lower().encode() for n in names}
    if not any(n in header.lower() for n in unwanted):
        return header
    return b"".join(raw for raw, name in iter_fields(header) if name not in unwanted)


MESSAGE_ID_LIMIT: Final = 255  # characters of a Message-ID kept for the trace


def message_id(header: bytes, lowered: bytes) -> str:
    """The first Message-ID field's value, unfolded and made safe to store and log
    (``lowered``: the header section in lower case, for a scan without a parse).

    A client chose it: control characters become ``?`` and it is cut to
    :data:`MESSAGE_ID_LIMIT` characters.  ``''`` when there is none.
    """
    if lowered.startswith(b"message-id:"):
        start = 0
    else:
        start = lowered.find(b"\nmessage-id:") + 1
        if start == 0:
            return ""
    end = start
    while True:  # through the continuation lines
        end = header.find(b"\n", end)
        if end < 0:
            end = len(header)
            break
        if header[end + 1:end + 2] not in (b" ", b"\t"):
            break
        end += 1
    value = b" ".join(header[start + len(b"message-id:"):end].split())
    return header_safe(value.decode("utf-8", "replace"))[:MESSAGE_ID_LIMIT]
