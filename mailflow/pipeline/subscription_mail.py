"""The mail of subscriptions: confirmations, welcome and goodbye, answers to list commands,
and the notice of a request waiting for a list's owners.

Every one comes from the list's ``-request`` address (its robot, as in Mailman), is
written on the relay's own account (``GENERATED``: the null envelope sender) and says
it is automatic (``Auto-Submitted``, RFC 3834), so no well-behaved robot answers it.
Values a sender controls (its address, a subject) reach a header only through
:func:`mailflow.headers.header_safe` and the email package's header policy, which
refuses a line break.  The welcome and goodbye texts are the list's templates
(``--welcome-file``, ``--goodbye-file``), rendered in the sandbox of
:mod:`mailflow.pipeline.send.templates`, or the defaults below.
"""

from __future__ import annotations

import email.policy
import re
from collections.abc import Sequence
from email.message import EmailMessage
from typing import Final

from mailflow import addresses, headers
from mailflow.model import MailingList
from mailflow.pipeline.moderation import notice_fields
from mailflow.pipeline.send import templates

DEFAULT_WELCOME: Final = """\
Welcome to {{ list.name or list.address }}!

{{ member.address }} is now a member of {{ list.address }}: write to that address to
post to the list.

To leave the list, send a message to {{ list.leave }}{% if list.url %}, or use
{{ list.url }}{% endif %}.  For help, write to {{ list.request }} with the subject
"help"; the list's owners are at {{ list.owner }}.
"""

DEFAULT_GOODBYE: Final = """\
{{ member.address }} is no longer a member of {{ list.address }}, and gets no more of
its mail.

To join again, send a message to {{ list.join }}{% if list.url %} or use
{{ list.url }}{% endif %}.
"""
_MSGID: Final = re.compile(r"<[^<>\s]{1,250}>")
_UNFOLDED: Final = email.policy.SMTP.clone(max_line_length=998)
MAX_REFERENCES: Final = 20


def robot_address(mailing_list: MailingList, suffix: str = "-request") -> str:
    local, domain = addresses.split(mailing_list.address)
    return f"{local}{suffix}@{domain}"


def _message(mailing_list: MailingList, to: str, subject: str, now: float, *,
             original: bytes = b"") -> EmailMessage:
    """The fields of one mail to ``to``; ``original``: the header section of the command
    it answers (threaded under it, and marked auto-replied rather than auto-generated)."""
    message = notice_fields(robot_address(mailing_list), [headers.header_safe(to)],
                            headers.header_safe(subject)[:250], now)
    if original:
        message.replace_header("Auto-Submitted", "auto-replied")
        found = _MSGID.findall(" ".join(headers.field_values(original, "Message-ID")))
        if found:
            references = _MSGID.findall(" ".join(headers.field_values(original, "References")))
            message["In-Reply-To"] = found[0]
            message["References"] = " ".join([*references[-(MAX_REFERENCES - 1):], found[0]])
    return message


def _with_text(message: EmailMessage, text: str, *, unfolded: bool = False) -> bytes:
    """``unfolded``: long header lines stay whole (up to RFC 5322's 998 octets) rather
    than being split into RFC 2047 encoded words: a confirmation's Subject carries its
    token, which a robot or a plain client must find as it is."""
    message.set_content(text, cte="quoted-printable" if not text.isascii() else "7bit")
    return message.as_bytes(policy=_UNFOLDED) if unfolded else message.as_bytes()


def _name(mailing_list: MailingList) -> str:
    return mailing_list.name or mailing_list.address


def confirmation(mailing_list: MailingList, address: str, token: str, *, join: bool,
                 confirm_url: str, days: float, now: float, original: bytes = b"") -> bytes:
    """Ask ``address`` to confirm joining (or leaving) the list: its Subject is
    ``confirm TOKEN`` and its Reply-To the list's ``-request`` address, so a plain reply
    confirms; ``confirm_url`` ('' without a public URL) does too, with one click more."""
    what = "join" if join else "leave"
    message = _message(mailing_list, address, f"confirm {token}", now, original=original)
    message["Reply-To"] = robot_address(mailing_list)
    lines = [
        f"Someone, perhaps you, asked to {what} the list {_name(mailing_list)}"
        f" <{mailing_list.address}> with the address {address}.",
        "",
        "To confirm, reply to this message, keeping its subject.",
    ]
    if confirm_url:
        lines += ["Or open this page and press its button:", "", f"  {confirm_url}"]
    lines += ["", "If you did not ask for this, ignore this message: nothing changes.",
              f"This confirmation expires in {days:g} day(s).", ""]
    return _with_text(message, "\n".join(lines), unfolded=True)


def greeting(mailing_list: MailingList, address: str, name: str, *, welcome: bool,
             page_url: str, now: float) -> bytes:
    """The welcome (or goodbye) mail: the list's template, or the default text."""
    source = mailing_list.welcome_template if welcome else mailing_list.goodbye_template
    values = templates.variables(
        name=mailing_list.name, address=mailing_list.address, list_id=mailing_list.list_id,
        page_url=page_url, member_address=address, member_name=name,
        unsubscribe_url=page_url)
    text = templates.render(source, values) if source else ""
    if not text.strip():  # no template, or one that failed: the default
        text = templates.render(DEFAULT_WELCOME if welcome else DEFAULT_GOODBYE, values)
    subject = (f"Welcome to {_name(mailing_list)}" if welcome
               else f"You have left {_name(mailing_list)}")
    return _with_text(_message(mailing_list, address, subject, now), text)


def help_lines(mailing_list: MailingList, page_url: str) -> list[str]:
    """How to use the list by mail (the ``help`` answer, and the end of other answers)."""
    lines = [f"{_name(mailing_list)} <{mailing_list.address}>", "",
             f"  To join:   send a message to {robot_address(mailing_list, '-join')}",
             f"  To leave:  send a message to {robot_address(mailing_list, '-leave')}",
             f"  Commands:  write \"subscribe\", \"unsubscribe\" or \"help\" as the subject"
             f" of a message to {robot_address(mailing_list)}",
             f"  Owners:    {robot_address(mailing_list, '-owner')}"]
    if page_url:
        lines.append(f"  Web page:  {page_url}")
    return lines


def answer(mailing_list: MailingList, to: str, subject: str, text: Sequence[str], *,
           original: bytes, page_url: str, now: float) -> bytes:
    """An answer to a list command (help, a refusal, a result), threaded under it."""
    lines = [*text, "", *help_lines(mailing_list, page_url), ""]
    return _with_text(_message(mailing_list, to, subject, now, original=original),
                      "\n".join(lines))


def request_notice(mailing_list: MailingList, owners: Sequence[str], address: str,
                   now: float) -> bytes:
    """Tell a list's owners and moderators that ``address`` asks to join."""
    message = notice_fields(mailing_list.address, [headers.header_safe(o) for o in owners],
                            f"{mailing_list.address}: {headers.header_safe(address)} "
                            "asks to join", now)
    text = "\n".join([
        f"{address} asks to join {_name(mailing_list)} <{mailing_list.address}>, whose "
        "subscriptions are approved by its owners.",
        "",
        "To decide, on the relay:",
        "",
        "  mailflow requests ls --list " + mailing_list.address,
        "  mailflow requests approve ID                 add the member, welcome them",
        "  mailflow requests reject ID [--reason TEXT]  refuse, tell them",
        "",
    ])
    return _with_text(message, text)


def refusal_notice(mailing_list: MailingList, address: str, reason: str, *,
                   page_url: str, now: float) -> bytes:
    """Tell ``address`` its request to join was refused by the list's owners."""
    lines = [f"Your request to join {_name(mailing_list)} <{mailing_list.address}> was "
             "refused by the list's owners."]
    if reason:
        lines += ["", "The reason they gave:", "", *(f"  {line}" for line in
                                                     reason.splitlines())]
    return answer(mailing_list, address, f"Your request to join {_name(mailing_list)}",
                  lines, original=b"", page_url=page_url, now=now)


def expiry_notice(mailing_list: MailingList, address: str, days: int, *,
                  page_url: str, now: float) -> bytes:
    """Tell ``address`` its request to join waited ``days`` (the list's ``hold_days``)
    without an answer and was dropped, so it knows to ask again rather than wait."""
    lines = [f"Your request to join {_name(mailing_list)} <{mailing_list.address}> was "
             f"not answered by the list's owners within {days} day(s), so it has expired.",
             "", "You may ask again (see below)."]
    return answer(mailing_list, address, f"Your request to join {_name(mailing_list)} expired",
                  lines, original=b"", page_url=page_url, now=now)
