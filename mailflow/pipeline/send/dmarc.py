"""DMARC-safe From: a list copy from the list's own address, the author kept for replies.

A receiver checking DMARC (RFC 7489) finds the author's domain in ``From:``, but neither
the author's SPF (the list sends) nor the author's DKIM signature (the list added fields,
perhaps a footer) passes for it; under ``p=reject`` the copy is refused.  With the list's
address in ``From:`` the check is against the list's domain, which the relay's own
signature and SPF pass.  The author's address moves to ``Reply-To:`` (or ``Cc:``), so a
reply still reaches them.  Whether a copy is rewritten is decided before the chain runs
(``CopyContext.rewrite_from``): ``--dmarc always``, or ``auto`` and the author's domain
publishes ``p=quarantine`` or ``p=reject``.
"""

from __future__ import annotations

import re
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.utils import formataddr, getaddresses

from mailflow.headers import display_phrase, field_values, header_safe
from mailflow.model import AuthorField
from mailflow.pipeline.context import CopyContext

# An author address worth carrying: no spaces, controls, brackets or commas (which would
# make the Reply-To: field say more than one address), one @ with text on both sides.
PLAIN_ADDRESS = re.compile(r"[^\s<>(),;:\"@\[\]\\]+@[^\s<>(),;:\"@\[\]\\]+")


def author(header: bytes) -> tuple[str, str]:
    """(display name, address) of the first ``From:`` address, decoded; ('', '') if none
    or if it is not a plain address."""
    values = field_values(header, "From")
    if not values:
        return "", ""
    pairs = getaddresses([values[0]])
    if not pairs:
        return "", ""
    name, address = pairs[0]
    if not PLAIN_ADDRESS.fullmatch(address):
        return "", ""
    return _decoded(name), address


def dmarc_from(copy: CopyContext) -> None:
    if copy.rewrite_from is None:
        return
    name, address = author(copy.header)
    if not address:
        return  # nothing the receiver could hold against the author's domain
    mailing_list = copy.mailing_list
    list_name = mailing_list.name or mailing_list.address.split("@", 1)[0]
    shown = f"{name or address} via {list_name}"
    copy.added.append(f"From: {display_phrase(shown)} <{mailing_list.address}>")
    copy.removed.append("From")
    # A list that sets Reply-To itself (``--reply-to``) keeps it: the author goes in Cc.
    sets_reply_to = any(added.lower().startswith("reply-to:") for added in copy.added)
    field = ("Reply-To" if copy.rewrite_from is AuthorField.REPLY_TO and not sets_reply_to
             else "Cc")
    existing = [header_safe(v) for v in field_values(copy.header, field)]
    if any(address.lower() == a.lower() for _, a in getaddresses(existing)):
        return
    entry = formataddr((header_safe(name), address), charset="utf-8")
    copy.added.append(f"{field}: {', '.join([*existing, entry])}")
    copy.removed.append(field)


def _decoded(name: str) -> str:
    """An RFC 2047 display name as text (as is when it does not decode)."""
    try:
        return str(make_header(decode_header(name)))
    except (HeaderParseError, LookupError, UnicodeDecodeError):
        return name
