"""A copy's header made acceptable to Amazon SES before it is sent.

SES refuses a raw message (``MessageRejected``) or rewrites it in ways that break it when
its header has fields SES owns or checks:

* ``Return-Path``: SES sets its own (the MAIL FROM domain).
* a second ``Message-ID``, ``DKIM-Signature``, ``List-Id``, ``Subject`` … (:data:`ONCE`,
  the fields SES documents as allowed once): SES refuses the message; the first stays.
  A forwarded message often has two ``DKIM-Signature`` fields (its sender's and its
  provider's); the topmost, the last signer's, stays.  SES replaces ``Message-ID`` and
  ``Date`` with its own anyway.
* ``Sender`` naming another domain than ``From``'s or the envelope sender's: SES refuses
  a Sender that is not a verified identity, and the only domains the relay knows to be
  verified are those it sends as.

Only the header section is edited: the body stays byte-identical, as everywhere in
the relay.
"""

from __future__ import annotations

from email.utils import parseaddr

from mailflow.headers import field_values, iter_fields, split_message

REMOVED = frozenset({b"return-path"})
# The fields SES takes at most once (its "header fields" documentation).
ONCE = frozenset({
    b"accept-language", b"acceptlanguage", b"archived-at", b"auto-submitted", b"bounces-to",
    b"comments", b"content-alternative", b"content-base", b"content-class",
    b"content-description", b"content-disposition", b"content-duration", b"content-id",
    b"content-language", b"content-length", b"content-location", b"content-md5",
    b"content-transfer-encoding", b"content-type", b"date", b"delivered-to",
    b"disposition-notification-options", b"disposition-notification-to", b"dkim-signature",
    b"domainkey-signature", b"errors-to", b"from", b"importance", b"in-reply-to", b"keywords",
    b"list-archive", b"list-help", b"list-id", b"list-owner", b"list-post", b"list-subscribe",
    b"list-unsubscribe", b"list-unsubscribe-post", b"message-context", b"message-id",
    b"mime-version", b"organization", b"original-from", b"original-message-id",
    b"original-recipient", b"original-subject", b"precedence", b"priority", b"references",
    b"reply-to", b"return-path", b"return-receipt-to", b"sender", b"solicitation",
    b"sensitivity", b"subject", b"thread-index", b"thread-topic", b"user-agent", b"vbr-info",
})


def _domain(value: str) -> str:
    return parseaddr(value)[1].rpartition("@")[2].lower()


def ses_ready(content: bytes, mail_from: str) -> bytes:
    """``content`` with the fields SES would refuse taken out (itself when none are)."""
    header, rest = split_message(content)
    seen: set[bytes] = set()
    kept: list[bytes] = []
    changed = False
    keep_sender = _sender_allowed(header, mail_from)
    for raw, name in iter_fields(header):
        drop = name in REMOVED or (name in ONCE and name in seen) or (
            name == b"sender" and not keep_sender)
        if name in ONCE:
            seen.add(name)
        if drop:
            changed = True
            continue
        kept.append(raw)
    return b"".join(kept) + rest if changed else content


def _sender_allowed(header: bytes, mail_from: str) -> bool:
    senders = field_values(header, "sender")
    if not senders:
        return True
    ours = {_domain(mail_from)} if "@" in mail_from else set()
    ours.update(_domain(value) for value in field_values(header, "from")[:1])
    return _domain(senders[0]) in ours
