"""A list's header and footer text added to the body of a copy, in place where it is safe.

Where the text goes (RFC 2045/2046 as mail clients show them):

* ``text/plain`` and ``text/html`` (not attachments): in the part itself, in its own
  charset and transfer encoding (``7bit``, ``8bit``, ``binary``, ``quoted-printable``,
  ``base64``); HTML gets it after ``<body>`` and before ``</body>``;
* ``multipart/alternative``: in every text part (all, or none: its alternatives must
  say the same); ``multipart/related``: in its root part;
* ``multipart/mixed``: in its first text part, else as new ``text/plain`` parts before
  and after the others;
* anything else, and ``multipart/signed``, ``multipart/encrypted`` and S/MIME, whose
  insides are never touched: the message becomes a ``multipart/mixed`` of the header
  part, the original entity byte for byte, and the footer part.

A text part whose charset cannot hold the text (an ISO-8859-1 part and a footer in
Greek), or whose encoding cannot (``7bit`` and non-ASCII), is not changed in place: its
container gets new parts instead.  Every other part keeps its bytes.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import quopri
import re
import secrets
from dataclasses import dataclass
from email.message import MIMEPart
from email.policy import default as default_policy
from typing import Final

from mailflow import headers
from mailflow.pipeline.send import mime_parts
from mailflow.pipeline.send.mime_parts import Entity
from mailflow.pipeline.send.templates import as_html

_TEXT_TYPES: Final = frozenset({"text/plain", "text/html"})
_SEALED_TYPES: Final = frozenset({"multipart/signed", "multipart/encrypted",
                                  "application/pkcs7-mime", "application/x-pkcs7-mime",
                                  "application/pkcs7-signature"})
_PLAIN_ENCODINGS: Final = frozenset({"7bit", "8bit", "binary"})
_BODY_OPEN: Final = re.compile(rb"<body\b[^>]*>", re.IGNORECASE)
_BODY_CLOSE: Final = re.compile(rb"</body\s*>", re.IGNORECASE)
_HTML_CLOSE: Final = re.compile(rb"</html\s*>", re.IGNORECASE)
_BOUNDARY_ATTEMPTS: Final = 8


@dataclass(frozen=True, slots=True)
class Texts:
    """The rendered header and footer of one copy ('' for none)."""

    header: str
    footer: str


@dataclass(frozen=True, slots=True)
class Decorated:
    """A copy's new body and, when it was wrapped, the fields its header changes."""

    rest: bytes                          # blank line and body
    new_fields: tuple[str, ...] = ()     # added to the top header section
    removed_fields: tuple[str, ...] = ()  # the top-level Content-* fields (moved inside)


def decorate(header: bytes, rest: bytes, texts: Texts) -> Decorated:
    """The body of a copy with ``texts`` added (see the module's rules)."""
    top = mime_parts.entity(header, rest)
    if top is not None and top.content_type not in _SEALED_TYPES:
        body = _in_place(top, texts)
        if body is not None:
            return Decorated(top.separator + body)
    return _wrapped(header, rest, texts)


def _in_place(entity: Entity, texts: Texts) -> bytes | None:
    """The entity's new body, or None if it cannot take the texts itself."""
    kind = entity.content_type
    if kind in _TEXT_TYPES and not entity.attachment:
        return _text(entity, texts)
    if not entity.boundary or kind in _SEALED_TYPES:
        return None
    multipart = mime_parts.split(entity.body, entity.boundary)
    if multipart is None:
        return None
    if kind == "multipart/alternative":
        return _alternative(multipart, texts)
    if kind == "multipart/related":
        return _first(multipart, texts, 0)
    if kind == "multipart/mixed":
        return _mixed(entity, multipart, texts)
    return None


def _first(multipart: mime_parts.Multipart, texts: Texts, index: int) -> bytes | None:
    part = mime_parts.part_entity(multipart.parts[index])
    body = None if part is None else _in_place(part, texts)
    if part is None or body is None:
        return None
    multipart.replace(index, part.with_body(body))
    return multipart.joined()


def _alternative(multipart: mime_parts.Multipart, texts: Texts) -> bytes | None:
    changed = 0
    for index, raw in enumerate(multipart.parts):
        part = mime_parts.part_entity(raw)
        if part is None:
            return None
        if part.content_type in _TEXT_TYPES or part.content_type in (
                "multipart/related", "multipart/alternative"):
            body = _in_place(part, texts)
            if body is None:
                return None  # all alternatives or none
            multipart.replace(index, part.with_body(body))
            changed += 1
    return multipart.joined() if changed else None


def _mixed(entity: Entity, multipart: mime_parts.Multipart, texts: Texts) -> bytes | None:
    """The first text part takes the texts; else new parts around the others."""
    for index, raw in enumerate(multipart.parts):
        part = mime_parts.part_entity(raw)
        if part is None or part.attachment:
            continue
        if part.content_type in _TEXT_TYPES or part.content_type in (
                "multipart/alternative", "multipart/related"):
            body = _in_place(part, texts)
            if body is not None:
                multipart.replace(index, part.with_body(body))
                return multipart.joined()
            break
    newline = entity.newline
    if texts.footer:
        multipart.insert(len(multipart.parts), _text_part(texts.footer, newline), newline,
                         entity.boundary)
    if texts.header:
        multipart.insert(0, _text_part(texts.header, newline), newline, entity.boundary)
    return multipart.joined()


def _text(entity: Entity, texts: Texts) -> bytes | None:
    """A text part's body with the texts, in its charset and transfer encoding."""
    charset = entity.charset or "us-ascii"
    try:
        if codecs.lookup(charset).name.startswith(("utf-16", "utf-32")):
            return None  # not ASCII-compatible: no byte search for <body>
    except LookupError:
        return None
    decoded = _decoded(entity)
    if decoded is None:
        return None
    newline = b"\r\n" if b"\r\n" in decoded or (not decoded and entity.newline == b"\r\n") \
        else b"\n"
    html = entity.content_type == "text/html"
    try:
        before, after = (_snippet(t, charset, newline, html=html)
                         for t in (texts.header, texts.footer))
    except UnicodeError:
        return None
    if html:
        changed = _into_html(decoded, before, after)
    else:
        ending = b"" if not decoded or decoded.endswith(b"\n") else newline
        changed = before + decoded + ending + after
    return _encoded(changed, entity)


def _snippet(text: str, charset: str, newline: bytes, *, html: bool) -> bytes:
    if not text:
        return b""
    if html:
        text = f'<div class="mailflow-decoration">{as_html(text)}</div>'
    text = text.rstrip("\r\n") + "\n"
    return text.replace("\r\n", "\n").replace("\n", newline.decode()).encode(charset)


def _into_html(decoded: bytes, before: bytes, after: bytes) -> bytes:
    opening = _BODY_OPEN.search(decoded)
    start = opening.end() if opening else 0
    closings = [m.start() for m in _BODY_CLOSE.finditer(decoded, start)] or [
        m.start() for m in _HTML_CLOSE.finditer(decoded, start)]
    end = closings[-1] if closings else len(decoded)
    return decoded[:start] + before + decoded[start:end] + after + decoded[end:]


def _decoded(entity: Entity) -> bytes | None:
    encoding = entity.encoding
    if encoding in _PLAIN_ENCODINGS:
        return entity.body
    if encoding == "quoted-printable":
        return quopri.decodestring(entity.body)
    if encoding == "base64":
        try:
            return base64.b64decode(entity.body, validate=False)
        except (binascii.Error, ValueError):
            return None
    return None


def _encoded(body: bytes, entity: Entity) -> bytes | None:
    encoding = entity.encoding
    newline = entity.newline
    if encoding == "7bit":
        return body if body.isascii() else None
    if encoding in _PLAIN_ENCODINGS:
        return body
    if encoding == "quoted-printable":
        lines = quopri.encodestring(body.replace(b"\r\n", b"\n")).split(b"\n")
        return newline.join(lines)
    encoded = base64.encodebytes(body).replace(b"\n", newline)
    return encoded


def _text_part(text: str, newline: bytes) -> bytes:
    """A new ``text/plain`` part holding ``text`` (UTF-8, quoted-printable if not
    ASCII)."""
    policy = default_policy.clone(linesep=newline.decode())
    part = MIMEPart(policy=policy)
    text = text.rstrip("\r\n") + "\n"
    part.set_content(text, charset="utf-8", cte="7bit" if text.isascii() else
                     "quoted-printable", disposition="inline")
    return part.as_bytes(policy=policy)


def _wrapped(header: bytes, rest: bytes, texts: Texts) -> Decorated:
    """The whole original entity as the middle part of a new ``multipart/mixed``."""
    newline = b"\n" if header and not header.endswith(b"\r\n") else b"\r\n"
    content = [(raw, name) for raw, name in headers.iter_fields(header)
               if name.startswith(b"content-")]
    inner = b"".join(raw for raw, _ in content) + rest
    parts = [p for p in (_text_part(texts.header, newline) if texts.header else b"",
                         inner,
                         _text_part(texts.footer, newline) if texts.footer else b"") if p]
    boundary = _boundary(parts)
    body = newline.join([b"", *(b"--" + boundary + newline + part for part in parts),
                         b"--" + boundary + b"--", b""])
    fields = [f'Content-Type: multipart/mixed; boundary="{boundary.decode()}"']
    if not body.isascii():
        fields.append("Content-Transfer-Encoding: 8bit")
    if not any(name == b"mime-version" for _, name in headers.iter_fields(header)):
        fields.append("MIME-Version: 1.0")
    removed = tuple(sorted({name.decode("ascii", "replace") for _, name in content}))
    return Decorated(body, tuple(fields), removed)


def _boundary(parts: list[bytes]) -> bytes:
    """A boundary none of the parts contains (random; checked all the same)."""
    for _ in range(_BOUNDARY_ATTEMPTS):
        boundary = b"mailflow-" + secrets.token_hex(16).encode()
        if not any(boundary in part for part in parts):
            return boundary
    raise RuntimeError("no unused MIME boundary found")  # 2**-128 per attempt
