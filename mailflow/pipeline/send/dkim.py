"""The DKIM signature of an outgoing copy (RFC 6376, dkimpy), the last step of its rendering.

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
"""

from __future__ import annotations

import logging

from mailflow.model import DkimKey

log = logging.getLogger(__name__)

CANONICALIZATION = (b"relaxed", b"relaxed")


def dkim_signed(content: bytes, key: DkimKey) -> bytes:
    """``content`` with ``key``'s DKIM-Signature field first; unsigned if it cannot be
    signed (logged: a message dkimpy cannot read still goes out, as received)."""
    import dkim  # dkimpy (and dnspython under it): loaded by the first signature only

    newline = b"\n" if b"\r\n" not in content[:content.find(b"\n") + 1] else b"\r\n"
    try:
        field: bytes = dkim.sign(content, key.selector.encode(), key.domain.encode(),
                          key.private_key.encode(), canonicalize=CANONICALIZATION,
                          linesep=newline)
    except dkim.DKIMException as exc:
        log.warning("cannot DKIM-sign a copy for %s: %s; sent unsigned", key.domain, exc,
                    extra={"action": "dkim_error"})
        return content
    if newline == b"\n":
        field = field.replace(b"\r\n", b"\n")
    return field + content
