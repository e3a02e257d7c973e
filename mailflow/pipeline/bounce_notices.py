"""The mail bounce processing sends: a warning to a member disabled for bouncing, and
the notice that tells the list's owners.

Written by the relay on its own account (``GENERATED``: null envelope sender, so a
warning that bounces again starts no loop) and marked ``Auto-Submitted:
auto-generated`` (RFC 3834), so no auto-responder answers them.
"""

from __future__ import annotations

import email.policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from mailflow import addresses, headers
from mailflow.model import MailingList

_POLICY = email.policy.SMTP.clone(max_line_length=78)


def _message(mailing_list: MailingList, to: str, subject: str, text: str,
             now: float) -> bytes:
    message = EmailMessage(policy=_POLICY)
    _, domain = addresses.split(mailing_list.address)
    message["From"] = mailing_list.bounces_address or mailing_list.address
    message["To"] = headers.header_safe(to)
    message["Subject"] = headers.header_safe(subject)
    message["Date"] = formatdate(now)
    message["Message-ID"] = make_msgid(domain=domain or None)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text, cte="quoted-printable" if not text.isascii() else "7bit")
    return message.as_bytes()


def member_warning(mailing_list: MailingList, member: str, number: int, total: int,
                   now: float) -> bytes:
    """Warning ``number`` of ``total`` to a member disabled for bouncing."""
    text = (f"Your membership of {mailing_list.address} is disabled: mail to <{member}> "
            "bounced too often, so the list sends you nothing for now.\n\n"
            f"This is warning {number} of {total}. After the last one you are removed "
            "from the list; ask its owners to enable your membership again if your "
            "address works now.\n")
    return _message(mailing_list, member,
                    f"Your membership of {mailing_list.address} is disabled", text, now)


def owners_notice(mailing_list: MailingList, member: str, score: float, owners: str,
                  now: float) -> bytes:
    """Tells the owners a member was disabled."""
    text = (f"<{member}> is disabled on {mailing_list.address}: its bounce score reached "
            f"{score:g} (the list's threshold is {mailing_list.bounce_threshold:g}).\n\n"
            "The member gets warnings and is removed after the last one unless it is "
            "enabled again. `mailflow bounces ls --list "
            f"{mailing_list.address}` shows its bounces.\n")
    return _message(mailing_list, owners,
                    f"Bounce action: {member} disabled on {mailing_list.address}", text, now)
