"""The ``strip`` filter action: a copy without the attachments its rule names.

The rule's condition is an attachment glob (``--attachment GLOB``); its copies lose every
attachment whose MIME type or file name matches it, judged as the condition judges them
(a leaf part with ``Content-Disposition: attachment``, a file name, or a type that is
not text).  Everything else stays byte for byte: the removed parts are cut out of the
received bytes at their MIME boundaries (the line break before a boundary line belongs
to it, RFC 2046), never re-serialized, and one short ``text/plain`` part saying what was
removed goes in before the outermost closing boundary.

Never cut: the inside of ``multipart/signed`` and ``multipart/encrypted`` (the
signature or the decryption would break), nor the inside of an attached message
(``message/rfc822``: removed or kept whole, by its own type and file name), nor a
multipart whose boundary cannot be found.  A copy with nothing to remove (the match
was inside one of those) is the message as it was, without a note.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import MIMEPart
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from typing import Final

from mailflow import headers
from mailflow.model import FilterAction
from mailflow.pipeline.accept.filters import attachment_matches
from mailflow.pipeline.context import CopyContext

# Multiparts whose inside is never cut (the whole part may still be removed).
_SEALED: Final = frozenset({"multipart/signed", "multipart/encrypted"})
_MAX_DEPTH: Final = 20  # nesting followed; deeper parts are kept as they are
_NAME_MAX_LENGTH: Final = 200  # characters of a file name the note repeats


@dataclass(frozen=True, slots=True)
class Removed:
    """One attachment taken out of a copy, as the note names it."""

    content_type: str
    filename: str
    size: int


def filter_strip(copy: CopyContext) -> None:
    """The send step: cut the attachments of the copy's ``strip`` rule."""
    rule = copy.filter_rule
    if rule is None or rule.action is not FilterAction.STRIP:
        return
    rest = bytes(copy.body)
    removed: list[Removed] = []
    stripped = _strip(copy.header, rest, rule.argument, removed, 0)
    if not removed or stripped is None:
        return
    newline = b"\n" if copy.header and not copy.header.endswith(b"\r\n") else b"\r\n"
    body, boundary, close = stripped
    note = _note(removed, copy.mailing_list.address, rule.argument, newline)
    copy.body = b"".join((body[:close], newline, b"--", boundary, newline, note,
                          body[close:]))


def _strip(header: bytes, rest: bytes, glob: str, removed: list[Removed], depth: int
           ) -> tuple[bytes, bytes, int] | None:
    """``rest`` (blank line and body) of a multipart without its matching attachments,
    its boundary and where its closing boundary line starts; None if it is not a
    multipart that may be cut.  What was cut is appended to ``removed``."""
    fields = BytesHeaderParser(policy=default_policy).parsebytes(header)
    content_type = fields.get_content_type()
    if fields.get_content_maintype() != "multipart" or content_type in _SEALED:
        return None
    boundary_text = fields.get_boundary()
    if not boundary_text or not boundary_text.isascii() or depth >= _MAX_DEPTH:
        return None
    boundary = boundary_text.encode()
    delimiter = re.compile(rb"\r?\n--" + re.escape(boundary) + rb"(--)?[ \t]*(?=\r?\n|\Z)")
    out: list[bytes] = []
    kept_until = 0  # rest[:kept_until] is decided (copied to ``out``)
    opened: re.Match[bytes] | None = None
    for match in delimiter.finditer(rest):
        if opened is not None:
            start = rest.find(b"\n", opened.end()) + 1
            if start == 0 or start > match.start():
                return None
            part = rest[start:match.start()]
            changed = _changed_part(part, glob, removed, depth)
            if changed is None:  # removed: the part and the boundary line before it
                out.append(rest[kept_until:opened.start()])
                kept_until = match.start()
            elif changed is not part:
                out.append(rest[kept_until:start])
                out.append(changed)
                kept_until = match.start()
        if match.group(1):
            out.append(rest[kept_until:match.start()])
            close = sum(len(piece) for piece in out)
            out.append(rest[match.start():])
            return b"".join(out), boundary, close
        opened = match
    return None  # no closing boundary line: left as it is


def _changed_part(part: bytes, glob: str, removed: list[Removed], depth: int
                  ) -> bytes | None:
    """``part`` itself if kept as it is, a new part if cut inside, None if removed."""
    if part.startswith((b"\r\n", b"\n")):  # no header fields: text/plain by default
        return part
    cut = headers.header_length(part)
    header, rest = part[:cut], part[cut:]
    fields = BytesHeaderParser(policy=default_policy).parsebytes(header)
    if fields.get_content_maintype() == "multipart":
        inner = _strip(header, rest, glob, removed, depth + 1)
        return part if inner is None else header + inner[0]
    try:
        filename = fields.get_filename() or ""
    except Exception:  # a malformed parameter: no file name
        filename = ""
    content_type = fields.get_content_type()
    is_attachment = (fields.get_content_disposition() == "attachment" or filename
                     or fields.get_content_maintype() != "text")
    if is_attachment and attachment_matches(content_type, filename, glob):
        removed.append(Removed(content_type, filename, len(part)))
        return None
    return part


def _note(removed: list[Removed], address: str, glob: str, newline: bytes) -> bytes:
    """The text part that says what the copy lost (the part's bytes, no final break)."""
    lines = [f"{len(removed)} attachment{'s' if len(removed) > 1 else ''} matching "
             f"{glob} removed by a filter rule of {address}:"]
    for item in removed:
        name = headers.header_safe(item.filename)[:_NAME_MAX_LENGTH] or "(no file name)"
        lines.append(f"- {name} ({item.content_type}, {item.size} bytes)")
    part = MIMEPart(policy=default_policy.clone(linesep=newline.decode()))
    part.set_content("\n".join(lines) + "\n", charset="utf-8", cte="quoted-printable")
    part["Content-Disposition"] = "inline"
    return part.as_bytes().rstrip(b"\r\n")
