"""A copy's header made acceptable to Amazon SES before it is sent.

SES refuses a raw message (``MessageRejected``) or rewrites it in ways that break it when
its header has fields SES owns or checks:

* ``Return-Path``: SES sets its own (the MAIL FROM domain); one left in is refused.
* a second ``Message-ID`` (or ``Date``, ``From``, ``Subject`` … which RFC 5322 allows
  once): SES refuses a duplicate; the first one stays.
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
ONCE = frozenset({b"message-id", b"date", b"from", b"sender", b"reply-to", b"to", b"cc",
                  b"subject", b"in-reply-to", b"references"})


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
