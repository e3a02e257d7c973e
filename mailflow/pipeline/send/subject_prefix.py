"""A list's subject prefix: ``[team] Subject``, added once.

A reply keeps the prefix of the post it answers (``Re: [team] ...``), so the prefix is
added only when the decoded subject does not contain it already (compared without case
and runs of white space): a thread never grows ``[team] Re: [team] ...``.

The field keeps its own bytes where it can: an ASCII prefix goes before the original
value as it was received (folding, RFC 2047 encoded words and all; ``[team]`` followed
by a space before an encoded word decodes as ``[team] ``).  Only a prefix that is not
ASCII makes a new field from the decoded subject, encoded again by the email package.
"""

from __future__ import annotations

import functools
from email.header import Header, decode_header, make_header
from typing import Final

from mailflow import headers

SUBJECT = b"subject"


def decoded_subject(value: str) -> str:
    """An RFC 2047 value as text (as received when it does not decode)."""
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # a broken encoded word: compare with the raw text
        return value


def _normalized(text: str) -> str:
    return " ".join(text.split()).casefold()


# Each member's copy of a personalized post prefixes the same header: the result is
# remembered for small header sections (at most 32 x 2 x 8 KB).
KEPT: Final = 32
KEPT_MAX_HEADER: Final = 8 * 1024


def prefixed(header: bytes, prefix: str) -> bytes:
    """``header`` with its first Subject field prefixed (one added if there is none)."""
    if len(header) <= KEPT_MAX_HEADER:
        return _kept(header, prefix)
    return _prefixed(header, prefix)


def _prefixed(header: bytes, prefix: str) -> bytes:
    fields = list(headers.iter_fields(header))
    found = next((i for i, (_, name) in enumerate(fields) if name == SUBJECT), None)
    newline = b"\n" if header and not header.endswith(b"\r\n") else b"\r\n"
    if found is None:
        return header + b"Subject: " + prefix.encode("utf-8") + newline
    raw = fields[found][0]
    value = raw.split(b":", 1)[1]
    text = value.decode("utf-8", "surrogateescape")
    if _normalized(prefix) in _normalized(decoded_subject(" ".join(text.split()))):
        return header
    if prefix.isascii():
        new = b"Subject: " + prefix.encode() + (value if value[:1] in (b" ", b"\t")
                                                else b" " + value)
    else:
        subject = decoded_subject(" ".join(text.split()))
        encoded = Header(f"{prefix} {subject}", "utf-8", header_name="Subject").encode(
            linesep=newline.decode())
        new = b"Subject: " + encoded.encode("ascii") + newline
    return b"".join(raw if i != found else new for i, (raw, _) in enumerate(fields))


_kept = functools.lru_cache(maxsize=KEPT)(_prefixed)
