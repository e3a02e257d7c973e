"""The ``fwd`` forward style of an alias: a new message from the alias, the original inside.

What a mail client's "Forward" makes, so the target sees who wrote and replies go to
them (``Reply-To``), while the alias is the author its receiving server judges (SPF,
DMARC): ``Subject: Fwd: ...``, a short header block of the original (From, Date,
Subject, To), then the original's parts.

The parts are never re-encoded: each is cut from the received bytes at its MIME
boundaries and placed under a new boundary, so every attachment keeps its
Content-Transfer-Encoding and its encoded bytes.  A message that must not be taken
apart goes along whole as one ``message/rfc822`` part instead: signed or encrypted
(PGP/MIME, S/MIME: cutting it breaks the signature or the decryption), DKIM-signed
(its signature covers the body as received, which the target can then still check),
or a multipart whose boundaries cannot be found reliably.

Only the email package writes the new header fields (with its policy's folding and
RFC 2047 encoding), from values made header-safe first: a Subject of the original that
decodes to a line break cannot start a field of ours.  The original's trace fields
(``Received``, our loop marker) are carried over as they are, so the hop limit and the
loop check still count the way the message came (a forward chain A -> B -> A ends).
"""

from __future__ import annotations

import re
import secrets
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.parser import BytesHeaderParser
from email.policy import EmailPolicy
from email.policy import default as default_policy
from email.utils import formatdate
from typing import Final

from mailflow import headers
from mailflow.model import ForwardStyle, ListKind
from mailflow.pipeline.context import CopyContext

FWD_PREFIX: Final = "Fwd: "
# How much of one original field the header block and the Subject take (characters).
VALUE_MAX_LENGTH: Final = 500
# Originals that lose their meaning when cut apart: carried whole.
_SEALED_TYPES: Final = frozenset({"multipart/signed", "multipart/encrypted",
                                  "application/pkcs7-mime", "application/x-pkcs7-mime",
                                  "application/pkcs7-signature"})
_CARRIED_FIELDS: Final = frozenset({b"received", b"x-mailflow-loop"})
_SHOWN_FIELDS: Final = ("From", "Date", "Subject", "To")
_BOUNDARY_ATTEMPTS: Final = 8


def forward_style(copy: CopyContext) -> None:
    """Replace the copy by a forward, for an alias whose style is ``fwd``."""
    mailing_list = copy.mailing_list
    if mailing_list.kind is not ListKind.ALIAS or mailing_list.forward_style is not \
            ForwardStyle.FWD:
        return
    copy.header, copy.body = forwarded(copy)


def forwarded(copy: CopyContext) -> tuple[bytes, bytes]:
    """(new header section, new rest: blank line and body) of the forward of ``copy``."""
    header, rest = copy.header, bytes(copy.body)
    newline = b"\n" if header and not header.endswith(b"\r\n") else b"\r\n"
    policy = default_policy.clone(linesep=newline.decode())
    original = BytesHeaderParser(policy=default_policy).parsebytes(header)
    shown = {name: _value(original, name) for name in _SHOWN_FIELDS}

    parts = [_introduction(shown, policy)]
    pieces = None if _sealed(original, header) else _pieces(original, header, rest)
    if pieces is None:
        parts.append(_attached(header + rest, newline))
    else:
        parts.extend(pieces)
    boundary = _boundary(parts)
    body = newline.join(
        [b"", *(b"--" + boundary + newline + part for part in parts),
         b"--" + boundary + b"--", b""])
    fields = _new_fields(copy, original, shown["Subject"], boundary,
                         eight_bit=not body.isascii())
    carried = b"".join(raw for raw, name in headers.iter_fields(header)
                       if name in _CARRIED_FIELDS)
    message = EmailMessage(policy=policy)
    for name, value in fields:
        message[name] = value
    new_header = carried + b"".join(policy.fold_binary(name, value)
                                    for name, value in message.items())
    return new_header, body


def _value(original: EmailMessage, name: str) -> str:
    """A field of the original as text (encoded words decoded), safe and bounded."""
    try:
        value = original[name]
        text = "" if value is None else str(value)
    except Exception:  # a field the email package cannot parse: shown as missing
        return ""
    return headers.header_safe(" ".join(text.split()))[:VALUE_MAX_LENGTH]


def _sealed(original: EmailMessage, header: bytes) -> bool:
    if original.get_content_type() in _SEALED_TYPES:
        return True
    return any(name == b"dkim-signature" for _, name in headers.iter_fields(header))


def _pieces(original: EmailMessage, header: bytes, rest: bytes) -> list[bytes] | None:
    """The original's own parts, byte for byte; None if it cannot be cut safely.

    multipart/mixed: each of its parts; any other type: the whole entity (its Content-*
    fields and body), as one part.
    """
    if original.get_content_type() != "multipart/mixed":
        content = b"".join(raw for raw, name in headers.iter_fields(header)
                           if name.startswith(b"content-"))
        if original.get_content_maintype() == "multipart" and not content:
            return None
        return [content + rest]
    boundary = original.get_boundary()
    if not boundary or not boundary.isascii():
        return None
    return _cut(rest, boundary.encode())


def _cut(rest: bytes, boundary: bytes) -> list[bytes] | None:
    """The parts between the boundary lines of ``rest`` (blank line and body), or None
    without a closing boundary line or without parts.

    RFC 2046: the line break before a boundary line belongs to it, not to the part.
    """
    delimiter = re.compile(rb"\r?\n--" + re.escape(boundary) + rb"(--)?[ \t]*(?=\r?\n|\Z)")
    parts: list[bytes] = []
    start: int | None = None
    for match in delimiter.finditer(rest):
        if start is not None:
            parts.append(rest[start:match.start()])
        if match.group(1):
            return parts or None
        start = rest.find(b"\n", match.end()) + 1
        if start == 0:
            return None
    return None


def _introduction(shown: dict[str, str], policy: EmailPolicy[EmailMessage]) -> bytes:
    """The text part before the original: its header block."""
    lines = ["---------- Forwarded message ----------"]
    lines.extend(f"{name}: {value}" for name, value in shown.items() if value)
    part = MIMEPart(policy=policy)
    part.set_content("\n".join(lines) + "\n", charset="utf-8", cte="quoted-printable")
    return part.as_bytes(policy=policy)


def _attached(original: bytes, newline: bytes) -> bytes:
    encoding = b"7bit" if original.isascii() else b"8bit"
    return newline.join([b"Content-Type: message/rfc822",
                         b'Content-Disposition: attachment; filename="forwarded.eml"',
                         b"Content-Transfer-Encoding: " + encoding, b"", b""]) + original


def _boundary(parts: list[bytes]) -> bytes:
    """A boundary none of the parts contains (random; checked all the same)."""
    for _ in range(_BOUNDARY_ATTEMPTS):
        boundary = b"mailflow-fwd-" + secrets.token_hex(16).encode()
        if not any(boundary in part for part in parts):
            return boundary
    raise RuntimeError("no unused MIME boundary found")  # 2**-128 per attempt


def _new_fields(copy: CopyContext, original: EmailMessage, subject: str, boundary: bytes,
                *, eight_bit: bool) -> list[tuple[str, object]]:
    alias = copy.mailing_list
    local, _, domain = alias.address.rpartition("@")
    author = Address(display_name=headers.header_safe(alias.name), username=local,
                     domain=domain)
    if not subject.lower().startswith(FWD_PREFIX.lower().strip()):
        subject = FWD_PREFIX + subject
    fields: list[tuple[str, object]] = [
        ("From", author),
        ("To", Address(username=local, domain=domain)),
    ]
    reply_to = _senders(original)
    if reply_to:
        fields.append(("Reply-To", reply_to))
    fields += [
        ("Subject", subject),
        ("Date", formatdate(copy.message.received_at)),
        ("Message-ID", f"<{copy.message.id}.{alias.id}.fwd@{copy.identity.hostname}>"),
        ("MIME-Version", "1.0"),
        ("Content-Type", f'multipart/mixed; boundary="{boundary.decode()}"'),
    ]
    if eight_bit:
        fields.append(("Content-Transfer-Encoding", "8bit"))
    return fields


def _senders(original: EmailMessage) -> tuple[Address, ...]:
    """The original's From addresses, rebuilt from safe parts (for Reply-To); none if
    the field does not parse."""
    try:
        value = original["From"]
        found = getattr(value, "addresses", ()) if value is not None else ()
        return tuple(Address(display_name=headers.header_safe(a.display_name)[
                                 :VALUE_MAX_LENGTH],
                             username=headers.header_safe(a.username),
                             domain=headers.header_safe(a.domain))
                     for a in found if a.username and a.domain)
    except Exception:  # an unparsable From: the forward simply has no Reply-To
        return ()
