"""The DKIM signature of an outgoing copy (RFC 6376), the last step of its rendering.

It runs after the send chain, over the copy's final bytes (whatever the chain's steps
added or changed), so its signature covers what the receiver gets; nothing may change a
copy after it.  The signing domain (``d=``) is the domain of the list or alias the copy
is sent for: a list that writes its own address into ``From:`` is then DMARC-aligned,
and a sender cannot get mail signed for a domain by writing it into ``From:``.

Relaxed/relaxed canonicalization, so the usual changes in transit (refolded header
fields, whitespace at line ends) do not break it; rsa-sha256; the header fields dkimpy
signs by default, those of RFC 6376 5.4.1's list that are present (From, To, Cc,
Subject, Date, Message-ID, Reply-To, References, the MIME and ``List-*`` fields, ...),
``From`` also once more than present, so none can be added after signing.  The original's own
DKIM-Signature, if any, stays below ours.  Called once per rendering variant, on a
thread; the signed copy is what the copy cache keeps.

dkimpy parses the message and lays out the field, as its own ``dkim.sign`` does; the
relaxed canonicalization is ours (:func:`relaxed_body`, :func:`relaxed_headers`: the
same bytes as dkimpy's, in a fraction of its time), and the RSA operation is OpenSSL's
(``cryptography``), on a key loaded once.  dkimpy's own RSA is pure Python (``pow`` on
Python integers), parses the PEM key again for every signature and holds the GIL all
along, where OpenSSL lets go of it while it signs; a list personalized for 10,000
members signs 10,000 copies, so that was nearly all the cost of sending them.  The
signature is the same bytes either way (PKCS #1 v1.5 is deterministic);
``tests/test_dkim.py`` checks both that and that dkimpy verifies it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import re
import time
from typing import TYPE_CHECKING, Final

from mailflow.model import DkimKey

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

log = logging.getLogger(__name__)

CANONICALIZATION = (b"relaxed", b"relaxed")
FIELD_NAME: Final = b"DKIM-Signature"
KEYS_KEPT: Final = 64  # loaded private keys (a 2048-bit key object is a few kB)


class SigningError(ValueError):
    """A copy or key that cannot be signed (why is in the text)."""


@functools.lru_cache(maxsize=KEYS_KEPT)
def _private_key(pem: str) -> RSAPrivateKey:
    """The key object of a PEM text, loaded once (parsing and checking a 2048-bit key
    costs more than a signature)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"unusable private key: {exc}") from None
    if not isinstance(key, RSAPrivateKey):
        raise SigningError(f"not an RSA key: {type(key).__name__}")
    return key


def dkim_signed(content: bytes, key: DkimKey, now: float | None = None) -> bytes:
    """``content`` with ``key``'s DKIM-Signature field first; unsigned if it cannot be
    signed (logged: a message dkimpy cannot read still goes out, as received).

    ``now``: the signature's ``t=`` (default: the clock's time now)."""
    import dkim  # dkimpy (and dnspython under it): loaded by the first signature only

    newline = b"\n" if b"\r\n" not in content[:content.find(b"\n") + 1] else b"\r\n"
    try:
        field = signature_field(content, key, newline, time.time() if now is None else now)
    except (dkim.DKIMException, SigningError) as exc:
        log.warning("cannot DKIM-sign a copy for %s: %s; sent unsigned", key.domain, exc,
                    extra={"action": "dkim_error"})
        return content
    return field + content


def signature_field(content: bytes, key: DkimKey, newline: bytes, now: float) -> bytes:
    """The DKIM-Signature field of ``content``, ending in ``newline``: what
    ``dkim.sign`` makes (the same steps and layout, from dkimpy 1.1's ``DKIM.sign`` and
    ``gen_header``), signed by OpenSSL."""
    import dkim
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, utils
    from dkim.canonicalization import CanonicalizationPolicy

    private_key = _private_key(key.private_key)
    message = dkim.DKIM(content, linesep=newline)
    if not message.headers:
        raise SigningError("the copy has no header section")
    include = tuple(name.lower() for name in message.default_sign_headers())
    if b"from" not in include:
        raise SigningError("the copy has no From field, which a signature must cover")
    policy = CanonicalizationPolicy.from_c_value(b"/".join(CANONICALIZATION))
    body_hash = base64.b64encode(hashlib.sha256(relaxed_body(message.body)).digest())
    domain = key.domain.encode()
    fields = [
        (b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", policy.to_c_value()), (b"d", domain),
        (b"i", b"@" + domain), (b"q", b"dns/txt"), (b"s", key.selector.encode()),
        (b"t", str(int(now)).encode()), (b"h", b" : ".join(include)), (b"bh", body_hash),
        # dkimpy's placeholder makes b= fold onto its own line, so that the value
        # put in after signing does not change the whitespace of the tags before it.
        (b"b", b"0" * 60),
    ]
    value = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(FIELD_NAME),
                      linesep=b"\r\n")
    value = dkim.RE_BTAG.sub(b"\\1", value)
    # Only the fields it signs are canonicalized (what dkimpy selects from all of them:
    # it selects by the canonical name); a copy's Received and trace fields are not.
    wanted = frozenset(include)
    signed = [f for f in message.headers if f[0].lower().rstrip() in wanted]
    hasher = hashlib.sha256()
    dkim.hash_headers(hasher, policy, relaxed_headers(signed), include,
                      (FIELD_NAME, b" " + value), dict(fields))
    signature = private_key.sign(hasher.digest(), padding.PKCS1v15(),
                                 utils.Prehashed(hashes.SHA256()))
    fields[-1] = (b"b", base64.b64encode(signature))
    value = dkim.fold(b"; ".join(b"=".join(f) for f in fields) + newline,
                      namelen=len(FIELD_NAME), linesep=newline)
    return FIELD_NAME + b": " + bytes(value)


# RFC 6376's relaxed canonicalization (3.4.2, 3.4.4), giving exactly what dkimpy's
# ``Relaxed`` gives (``tests/test_dkim.py`` compares them): dkimpy's replaces every
# space by a space and looks its patterns up by their text at each call, which made the
# body alone cost more than a quarter of a personalized copy's time under the GIL.
_BLANKS: Final = re.compile(rb"[\t ]{2,}|\t")  # a run of blanks that is not one space
_BLANKS_AT_LINE_END: Final = re.compile(rb"[\t ]+\r\n")


def relaxed_body(body: bytes) -> bytes:
    """``body`` canonicalized, as ``dkim.canonicalization.Relaxed.canonicalize_body``."""
    if b" \r\n" in body or b"\t\r\n" in body:
        body = _BLANKS_AT_LINE_END.sub(b"\r\n", body)
    if b"\t" in body or b"  " in body:
        body = _BLANKS.sub(b" ", body)
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    # At most one line break at the end: one added if none, the empty lines dropped.
    body = body + b"\r\n" if end == len(body) else body[:end + 2]
    return b"" if body == b"\r\n" else body


def relaxed_headers(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``fields`` (name, value) canonicalized, as ``Relaxed.canonicalize_headers``."""
    canonical = []
    for name, value in fields:
        value = value.replace(b"\r\n", b"").replace(b"\n", b"")
        if b"\t" in value or b"  " in value:
            value = _BLANKS.sub(b" ", value)
        canonical.append((name.lower().rstrip(), value.strip() + b"\r\n"))
    return canonical
