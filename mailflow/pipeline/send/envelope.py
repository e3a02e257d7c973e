"""The envelope sender of a copy: who hears of it if the copy cannot be delivered.

* a **list** keeps its own bounce address (``team-bounces@d``); a personalized list's
  copy for one member gets that member's VERP address (``team-bounces+<token>@d``, see
  :mod:`mailflow.verp`), so its bounce names the member;
* an **alias** forward gets an SRS address of the alias's domain (see
  :mod:`mailflow.srs`): the destination's SPF check sees our domain, and a bounce comes
  back to us to be relayed to the original sender.  A forward of the null sender stays
  null: a bounce is never bounced;
* what the relay sends on its own account (auto-replies and echoes, ``GENERATED``; copies
  of a role alias such as ``postmaster``, whose address has no domain) or relays as a
  bounce (``RELAYED``) goes out with the null sender, as RFC 5321 section 4.5.5 asks of
  notifications and RFC 3834 section 3.3 of automatic replies -- but for mail a list
  forwards to its owners (``pipeline/process/owners.py``), written with the list's
  bounce address as its sender.
"""

from __future__ import annotations

from mailflow import addresses
from mailflow.model import GENERATED, RELAYED, InboundMessage, ListKind, MailingList
from mailflow.srs import Srs
from mailflow.verp import Verp


def envelope_sender(message: InboundMessage, mailing_list: MailingList, srs: Srs | None,
                    now: float, verp: Verp | None = None, recipient: str = "") -> str:
    """``recipient``: the one member of a personalized copy ('' for a shared one)."""
    if message.protocol == GENERATED:
        return message.mail_from  # '' but for mail forwarded to a list's owners
    if mailing_list.id == RELAYED:
        return ""
    if "@" not in mailing_list.address:  # a role alias: notifications to the operator
        return ""
    if mailing_list.kind is ListKind.ALIAS and srs is not None:
        return srs.forward(message.mail_from, addresses.split(mailing_list.address)[1], now)
    if (recipient and verp is not None and mailing_list.personalize
            and mailing_list.kind is ListKind.LIST):
        return verp.sender(mailing_list.address, recipient)
    return mailing_list.bounces_address
