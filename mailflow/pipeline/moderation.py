"""The mail moderation sends: a held post's notice to its moderators, and the rejection
notice to its author.

Both are messages the relay writes on its own account (``GENERATED``: the null envelope
sender, ``Auto-Submitted: auto-generated``), stored and queued like any copy.  Every
value taken from the held message (subject, addresses, the reason a moderator typed)
goes through :func:`mailflow.headers.header_safe` and the email package's header
policy, which refuses a line break in a field: nothing a sender controls can add one.
"""

from __future__ import annotations

import email.errors
import email.policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid
from typing import Final

from mailflow import addresses, headers
from mailflow.model import HeldPost, InboundMessage, MailingList

# A held message larger than this is attached as its header section only
# (text/rfc822-headers): the notice is stored in a database row, once per moderator list.
MAX_ATTACHED: Final = 1024 * 1024
_POLICY: Final = email.policy.SMTP
NO_REPLY_LOCALS: Final = frozenset({"mailer-daemon", "postmaster", "noreply", "no-reply"})


def post_author(mail_from: str, header: bytes) -> str:
    """Whom a rejection notice goes to: the first ``From:`` address, else the envelope
    sender; '' for a robot or nobody (a notice to it could start a loop)."""
    froms = [addresses.canonical(a) for _, a in getaddresses(
        headers.field_values(header, "From"))]
    author = next((a for a in froms if "@" in a), addresses.canonical(mail_from))
    local, _ = addresses.split(author) if "@" in author else ("", "")
    if not local or local in NO_REPLY_LOCALS:
        return ""
    auto = [v.split(";", 1)[0].strip().lower()
            for v in headers.field_values(header, "Auto-Submitted")]
    if any(value != "no" for value in auto):
        return ""
    return author


def subject_of(header: bytes) -> str:
    """The decoded ``Subject:`` of a message, header-safe ('' without one)."""
    values = headers.field_values(header, "Subject")
    if not values:
        return ""
    try:
        subject = str(make_header(decode_header(values[0])))
    except (ValueError, LookupError):  # a broken encoded word: keep it as it came
        subject = values[0]
    return headers.header_safe(subject)[:200]


def notice_fields(sender: str, to: list[str], subject: str, now: float) -> EmailMessage:
    """The header of a notice the relay writes (the policy refuses a line break in any
    value); shared with the list commands' mail (``subscription_mail.py``)."""
    message = EmailMessage(policy=_POLICY)
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = formatdate(now)
    message["Message-ID"] = make_msgid(domain=addresses.split(sender)[1] or None)
    message["Auto-Submitted"] = "auto-generated"
    message["Precedence"] = "bulk"
    return message


def moderator_notice(post: HeldPost, held: InboundMessage, mailing_list: MailingList,
                     moderators: list[str], raw: bytes, now: float) -> bytes:
    """Tell a list's owners and moderators a post waits for them, with the post attached
    (``message/rfc822``) and the commands that act on it."""
    header, _ = headers.split_message(raw)
    subject = subject_of(header)
    sender = headers.header_safe(addresses.canonical(held.mail_from)) or "<>"
    subject_line = (f"{mailing_list.address}: post held for moderation"
                    + (f": {subject}" if subject else ""))
    days = mailing_list.hold_days
    text = "\n".join([
        f"A post to {mailing_list.address} is held for moderation.",
        "",
        f"  Held post:  {held.id}",
        f"  From:       {headers.header_safe(post.author) or '(no author)'}",
        f"  Envelope:   {sender}",
        f"  Subject:    {subject or '(none)'}",
        f"  Reason:     {headers.header_safe(post.reason)}",
        "",
        "To act on it, on the relay:",
        "",
        f"  mailflow held approve {held.id}                 deliver it to the list",
        f"  mailflow held approve {held.id} --add-member    deliver it, add the author",
        f"  mailflow held reject {held.id} --reason TEXT    refuse it, tell the author",
        f"  mailflow held discard {held.id}                 drop it silently",
        "",
        f"Unless someone acts, it is discarded in {days} day(s).",
        "The post is attached.",
        "",
    ])
    if raw and len(raw) <= MAX_ATTACHED:
        notice = notice_fields(mailing_list.address, moderators, subject_line, now)
        notice.set_content(text)
        try:
            notice.add_attachment(email.message_from_bytes(raw, policy=_POLICY),
                                  filename=f"{held.id}.eml")
            return notice.as_bytes()
        except (ValueError, TypeError, LookupError, email.errors.MessageError):
            pass  # a post the email package cannot write back: its header section only
    notice = notice_fields(mailing_list.address, moderators, subject_line, now)
    notice.set_content(text)
    notice.add_attachment(header.decode("utf-8", "replace"), subtype="rfc822-headers",
                          filename=f"{held.id}-headers.txt")
    return notice.as_bytes()


def rejection_notice(author: str, mailing_list: MailingList, header: bytes, reason: str,
                     now: float) -> bytes:
    """Tell a post's author a moderator refused it, and why."""
    subject = subject_of(header)
    notice = notice_fields(mailing_list.address, [author],
                     f"Your post to {mailing_list.address} was rejected"
                     + (f": {subject}" if subject else ""), now)
    original = next(iter(headers.field_values(header, "Message-ID")), "").strip()
    if original.startswith("<") and original.endswith(">") and original.isprintable() \
            and len(original) < 250:
        notice["In-Reply-To"] = original
        notice["References"] = original
    lines = [f"Your post to {mailing_list.address}"
             + (f' ("{subject}")' if subject else "")
             + " was rejected by the list's moderators.", ""]
    if reason:
        lines += ["The reason they gave:", "", *(f"  {line}" for line in reason.splitlines()),
                  ""]
    notice.set_content("\n".join(lines))
    return notice.as_bytes()
