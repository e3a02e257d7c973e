"""Out-of-office replies and echo addresses: a new message back to the sender, by RFC 3834.

The reply is not sent from here: the step writes it as a message of its own (stored in
the same transaction as the original's processing, with the null envelope sender) and
plans one delivery of it through the list or alias, so it is queued, retried and traced
like any copy.  Whether to answer at all is :func:`no_reply_reason`, one pure function:
auto-replies must never answer mailing lists, bounces, other auto-replies or each
other, or two robots exchange mail until a quota ends it.
"""

from __future__ import annotations

import email.policy
import re
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import formatdate, getaddresses, make_msgid
from string import Template
from typing import Final

from mailflow import addresses, headers, ids
from mailflow.blobs import content_hash
from mailflow.model import (
    GENERATED,
    AutoReply,
    GeneratedMessage,
    InboundMessage,
    ListKind,
    MailingList,
    NewDelivery,
)
from mailflow.pipeline.context import ProcessContext

DAY: Final = 86_400.0
# Local parts of senders that are robots or role addresses (RFC 3834 section 2); a
# local part ending in ``-request`` or starting with ``owner-`` is a list's robot.
NO_REPLY_LOCALS: Final = frozenset({
    "mailer-daemon", "postmaster", "noreply", "no-reply", "no_reply", "donotreply",
    "do-not-reply"})
NO_REPLY_PRECEDENCE: Final = frozenset({"bulk", "junk", "list"})
# The original is parsed (to quote its text) only up to this size, on the writer
# thread; larger ones are named, not quoted.
MAX_QUOTED_SOURCE: Final = 1024 * 1024
MAX_QUOTE_CHARS: Final = 20_000
# An echo copies the whole message into a database row: larger ones are not echoed.
MAX_ECHO_BYTES: Final = 1024 * 1024
MAX_REFERENCES: Final = 20  # message ids carried over into References
# The template values, as the directory documents them.
TEMPLATE_KEYS: Final = ("sender", "subject", "address")
_MSGID = re.compile(r"<[^<>\s]{1,250}>")
_POLICY: Final = email.policy.SMTP


def no_reply_reason(mail_from: str, header: bytes, address: str) -> str | None:
    """Why ``address`` must not answer a message, or None if it may (RFC 3834).

    ``mail_from`` is the envelope sender, ``header`` the message's header section.  An
    out-of-office reply also needs ``address`` named in To or Cc (it was not Bcc'd).
    """
    reason = automatic_reason(mail_from, header, address)
    if reason is not None:
        return reason
    named = {addresses.canonical(a) for _, a in getaddresses(
        headers.field_values(header, "To") + headers.field_values(header, "Cc"))}
    if addresses.canonical(address) not in named:
        return f"<{address}> is not in To or Cc"
    return None


def automatic_reason(mail_from: str, header: bytes, address: str = "") -> str | None:
    """Why a message must get no automatic answer at all, or None (RFC 3834): it comes
    from a robot, a list or the null sender, or is automatic itself.  Shared by the
    auto-replies and the list commands (``commands.py``)."""
    sender = addresses.canonical(mail_from)
    if not sender:
        return "the envelope sender is empty (a bounce or notification)"
    local, _ = addresses.split(sender)
    if local in NO_REPLY_LOCALS:
        return f"the sender <{sender}> is a robot or role address"
    if local.endswith("-request") or local.startswith("owner-"):
        return f"the sender <{sender}> is a list's robot"
    if address and sender == addresses.canonical(address):
        return "the sender is the address itself"
    auto = [v.split(";", 1)[0].strip().lower()
            for v in headers.field_values(header, "Auto-Submitted")]
    if any(value != "no" for value in auto):
        return f"Auto-Submitted: {auto[0] or '(empty)'}"
    precedence = {v.strip().lower() for v in headers.field_values(header, "Precedence")}
    if precedence & NO_REPLY_PRECEDENCE:
        return f"Precedence: {sorted(precedence & NO_REPLY_PRECEDENCE)[0]}"
    for name in ("List-Id", "List-Unsubscribe"):
        if headers.field_values(header, name):
            return f"it came through a mailing list ({name})"
    return None


def render(template: str, *, sender: str, subject: str, address: str) -> str:
    """A user's template with ``$sender``, ``$subject`` and ``$address`` filled in.

    ``string.Template`` substitutes values, never evaluates them; every value is made
    header-safe (no CR, LF or other controls), as it may reach the Subject field.
    """
    return Template(template).safe_substitute(
        sender=headers.header_safe(sender), subject=headers.header_safe(subject),
        address=headers.header_safe(address))


def autoreply(ctx: ProcessContext) -> None:
    """Answer a message sent to an echo address, or to a list or alias with an active
    out-of-office reply."""
    message, directory = ctx.message, ctx.directory
    for rcpt in dict.fromkeys(addresses.canonical(r) for r in message.rcpt_tos):
        if not rcpt:
            continue
        resolution = directory.resolve(rcpt)
        target = resolution.mailing_list
        if resolution.kind != "list" or target is None:
            continue
        if target.kind is ListKind.ECHO:
            _answer(ctx, target, None)
            continue
        reply = directory.autoreply(target)
        if reply is not None and reply.active(ctx.now):
            _answer(ctx, target, reply)


def _answer(ctx: ProcessContext, target: MailingList, reply: AutoReply | None) -> None:
    message = ctx.message
    noun = "echo" if reply is None else "auto-reply"
    if message.protocol == GENERATED:
        ctx.event("no_reply", f"{noun} of {target.address}: the message is our own reply")
        return
    raw = ctx.content()
    header, _ = headers.split_message(raw)
    reason = no_reply_reason(message.mail_from, header, target.address)
    if reason is None and reply is None and len(raw) > MAX_ECHO_BYTES:
        reason = f"the message is larger than {MAX_ECHO_BYTES} bytes"
    sender = addresses.canonical(message.mail_from)
    if reason is None and reply is not None:
        last = ctx.directory.last_reply(target.id, sender)
        if last is not None and ctx.now - last < reply.once_per_days * DAY:
            reason = f"<{sender}> was answered less than {reply.once_per_days} day(s) ago"
    if reason is not None:
        ctx.event("no_reply", f"{noun} of {target.address}: not sent, {reason}")
        return
    try:
        content = (_echo(raw, header, message, target, ctx.now) if reply is None
                   else _autoreply(raw, header, message, target, reply, ctx.now))
    except (ValueError, TypeError, LookupError) as exc:
        # A value the email package refuses must not fail the batch's transaction
        # (every message in it would get a 451): the reply is dropped, with its reason.
        ctx.event("no_reply", f"{noun} of {target.address}: not sent, it could not be "
                              f"written ({type(exc).__name__}: {exc})")
        return
    generated = InboundMessage(
        id=ids.new_message_id(ctx.now), mail_from="", rcpt_tos=(sender,),
        blob=content_hash(content), size=len(content), received_at=ctx.now, peer="",
        helo="", protocol=GENERATED)
    ctx.generated.append(GeneratedMessage(generated, content))
    ctx.deliveries.append(NewDelivery(generated.id, target.id, sender, target.priority))
    if reply is not None:
        ctx.directory.note_reply(target.id, sender, ctx.now)
        ctx.replied.append((target.id, sender))
    ctx.event("replied", f"{noun} of {target.address} to <{sender}>: {generated.id}")


def _subject(header: bytes) -> str:
    values = headers.field_values(header, "Subject")
    if not values:
        return ""
    try:
        return str(make_header(decode_header(values[0])))
    except (ValueError, LookupError):  # a broken encoded word: keep it as it came
        return values[0]


def _reply_fields(header: bytes, message: InboundMessage, target: MailingList,
                  subject: str, now: float) -> EmailMessage:
    """The reply's header fields; the policy encodes non-ASCII values (RFC 2047) and
    refuses a line break in any of them."""
    reply = EmailMessage(policy=_POLICY)
    _, domain = addresses.split(target.address)
    reply["From"] = target.address
    reply["To"] = headers.header_safe(addresses.canonical(message.mail_from))
    reply["Subject"] = headers.header_safe(subject)
    reply["Date"] = formatdate(now)
    reply["Message-ID"] = make_msgid(domain=domain)
    reply["Auto-Submitted"] = "auto-replied"
    original = next(iter(_MSGID.findall(" ".join(headers.field_values(header, "Message-ID")))),
                    None)
    if original is not None:
        references = _MSGID.findall(" ".join(headers.field_values(header, "References")))
        reply["In-Reply-To"] = original
        reply["References"] = " ".join([*references[-(MAX_REFERENCES - 1):], original])
    return reply


def _autoreply(raw: bytes, header: bytes, message: InboundMessage, target: MailingList,
               config: AutoReply, now: float) -> bytes:
    original_subject = _subject(header)
    values = {"sender": addresses.canonical(message.mail_from),
              "subject": original_subject, "address": target.address}
    reply = _reply_fields(header, message, target, render(config.subject, **values), now)
    text = render(config.body, **values).rstrip("\n") + "\n\n" + _quoted(raw, values)
    reply.set_content(text, cte="quoted-printable" if not text.isascii() else "7bit")
    return reply.as_bytes()


def _quoted(raw: bytes, values: dict[str, str]) -> str:
    """The original's first text part, each line after ``> ``, bounded in size."""
    intro = f"<{values['sender']}> wrote:\n"
    if len(raw) > MAX_QUOTED_SOURCE:
        return f"(the original message of {len(raw)} bytes is not quoted)\n"
    parsed = BytesParser(policy=email.policy.default).parsebytes(raw)
    part = parsed.get_body(preferencelist=("plain",))
    if part is None:
        return "(the original message has no plain text part to quote)\n"
    try:
        text = part.get_content()
    except (LookupError, ValueError):  # an unknown charset or a broken encoding
        return "(the original text could not be decoded)\n"
    if not isinstance(text, str):
        return "(the original text could not be decoded)\n"
    text = text[:MAX_QUOTE_CHARS]
    return intro + "".join(f"> {line}\n" for line in text.splitlines())


def _echo(raw: bytes, header: bytes, message: InboundMessage, target: MailingList,
          now: float) -> bytes:
    """The message back to its sender: new fields, the original's MIME fields and body."""
    reply = _reply_fields(header, message, target, f"Auto: {_subject(header)}", now)
    ours, _ = headers.split_message(reply.as_bytes())
    newline = b"\r\n" if header.endswith(b"\r\n") or not header else b"\n"
    if newline != b"\r\n":
        ours = ours.replace(b"\r\n", newline)
    mime = b"".join(field for field, name in headers.iter_fields(header)
                    if name in (b"mime-version", b"content-type",
                                b"content-transfer-encoding"))
    _, body = headers.split_message(raw)
    return ours + mime + (body or newline)
