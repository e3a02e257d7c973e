"""List commands by mail: ``LIST-join@``, ``LIST-leave@``, ``LIST-request@``, ``LIST-owner@``.

As Mailman's command runner: ``-join`` and ``-leave`` are a subscribe and an
unsubscribe whatever the message says; ``-request`` reads one command (``subscribe``
or ``join``, ``unsubscribe`` or ``leave``, ``help``, ``confirm TOKEN``) from the Subject,
else from the first line of the plain-text body; a confirmation token anywhere in the
Subject or the first lines is a ``confirm`` (a reply to the confirmation mail).
``-owner`` mail goes on to the list's owners (:mod:`.owners`).

The address a command is about is the envelope sender's.  What happens depends on the
list's subscription policy (``open``: joined at once; ``confirm``: a token is mailed to
the address and the join is done when it comes back; ``approve``: a request for the
owners; ``closed``: refused) -- a leave is always confirmed, so nobody can unsubscribe
someone else with a forged sender.  Commands from robots, lists, the null sender or
automatic mail are ignored without an answer (RFC 3834, the auto-replies' own rule),
and one address gets at most ``max_replies`` answers a day.  Every command leaves a
``command`` event on the message's trace.

The step writes nothing itself: roster changes go to ``ctx.memberships`` and the
answers to ``ctx.generated`` (with their deliveries), written in the message's
transaction.
"""

from __future__ import annotations

import email.policy
import re
from dataclasses import dataclass
from email.parser import BytesParser
from typing import Final, Literal

from mailflow import addresses, headers, ids
from mailflow.blobs import content_hash
from mailflow.confirm_tokens import TOKEN_PATTERN, BadToken, Confirmation, ConfirmTokens
from mailflow.model import (
    GENERATED,
    GeneratedMessage,
    InboundMessage,
    MailingList,
    MemberRole,
    MembershipAction,
    MembershipChange,
    NewDelivery,
    SubscriptionPolicy,
)
from mailflow.pipeline import subscription_mail as mail
from mailflow.pipeline.context import ProcessContext
from mailflow.pipeline.moderation import subject_of
from mailflow.pipeline.process.autoreply import automatic_reason
from mailflow.pipeline.process.owners import forward_to_owners
from mailflow.pipeline.send.list_links import list_page_url

CommandName = Literal["join", "leave", "help", "confirm", "unknown"]
COMMANDS: Final[dict[str, CommandName]] = {
    "subscribe": "join", "join": "join", "unsubscribe": "leave", "leave": "leave",
    "signoff": "leave", "help": "help", "confirm": "confirm"}
MAX_PARSED: Final = 256 * 1024  # bytes of a command mail read for its body's first lines
BODY_LINES: Final = 10          # lines of the body searched for a token
_PREFIXES: Final = re.compile(r"^\s*(?:(?:re|aw|fwd?|sv|antw)\s*:\s*)+", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Command:
    name: CommandName
    token: str = ""


def parse_command(robot: str, subject: str, body: str) -> Command:
    """The command of a mail to the list's ``robot`` address (join, leave or request).

    ``subject`` is the decoded Subject, ``body`` the plain text (only its first lines
    count; quoted lines, ``> ...``, are skipped).
    """
    if robot == "join":
        return Command("join")
    if robot == "leave":
        return Command("leave")
    lines = [line.strip() for line in body.splitlines()]
    lines = [line for line in lines if line and not line.startswith(">")][:BODY_LINES]
    for text in (subject, *lines):
        found = TOKEN_PATTERN.search(text)
        if found is not None:
            return Command("confirm", found.group(0))
    for text in (subject, *lines[:1]):
        words = _PREFIXES.sub("", text).split()
        if words:
            name = COMMANDS.get(words[0].lower().rstrip(":"))
            if name is not None and name != "confirm":
                return Command(name)
    return Command("unknown")


def first_text(raw: bytes) -> str:
    """The start of a message's plain-text body ('' if it has none, or it is unreadable)."""
    parsed = BytesParser(policy=email.policy.default).parsebytes(raw[:MAX_PARSED])
    part = parsed.get_body(preferencelist=("plain",))
    if part is None:
        return ""
    try:
        text = part.get_content()
    except (LookupError, ValueError):  # an unknown charset or a broken encoding
        return ""
    return text[:8192] if isinstance(text, str) else ""


@dataclass(frozen=True, slots=True)
class ListCommands:
    """The step (built by the relay, which knows the token secret and its public URL)."""

    tokens: ConfirmTokens
    public_url: str = ""
    max_replies: int = 10  # answers per address and day

    def __call__(self, ctx: ProcessContext) -> None:
        for rcpt in dict.fromkeys(addresses.canonical(r) for r in ctx.message.rcpt_tos):
            if not rcpt:
                continue
            resolution = ctx.directory.resolve(rcpt)
            target = resolution.mailing_list
            if target is None:
                continue
            if resolution.kind == "owner":
                forward_to_owners(ctx, target, sender=target.bounces_address,
                                  why="mail to the owners")
            elif resolution.kind == "request":
                try:
                    CommandRun(self, ctx, target).command(resolution.detail)
                except (ValueError, TypeError, LookupError) as exc:
                    # A value the email package refuses must not fail the batch's
                    # transaction (every message in it would get a 451).
                    ctx.event("command", f"{target.address}: not answered, it could not "
                                         f"be written ({type(exc).__name__}: {exc})")


Outcome = Literal["joined", "left", "already", "not_member", "closed", "requested"]


class CommandRun:
    """One command of one message to one list; the list's page and ``mailflow requests``
    (``services/subscriptions.py``) run its parts too, with no message."""

    def __init__(self, step: ListCommands, ctx: ProcessContext, target: MailingList) -> None:
        self.step = step
        self.ctx = ctx
        self.target = target
        self.page = list_page_url(step.public_url, target.address)
        self.header = b""

    def note(self, text: str) -> None:
        self.ctx.event("command", f"{self.target.address}: {text}")

    def command(self, robot: str) -> None:
        ctx = self.ctx
        message = ctx.message
        if message.protocol == GENERATED:
            self.note("ignored, the message is the relay's own")
            return
        raw = ctx.content()
        self.header, _ = headers.split_message(raw)
        reason = automatic_reason(message.mail_from, self.header)
        if reason is not None:
            self.note(f"ignored, no answer: {reason}")
            return
        sender = addresses.canonical(message.mail_from)
        body = first_text(raw) if robot == "request" else ""  # the others need no parse
        command = parse_command(robot, subject_of(self.header), body)
        if ctx.directory.command_replies(sender, ctx.now) >= self.step.max_replies:
            self.note(f"{command.name} from <{sender}> ignored: {self.step.max_replies} "
                      "answers to that address today already")
            return
        if command.name == "join":
            self.join(sender)
        elif command.name == "leave":
            self.leave(sender)
        elif command.name == "confirm":
            self.confirm(sender, command.token)
        else:
            self.answer(sender, f"Help for {self.target.address}",
                        [] if command.name == "help" else
                        ["Your message held no command this address understands."])
            self.note(f"{command.name} from <{sender}>: help sent")

    # -- the commands ---------------------------------------------------------------

    def join(self, address: str) -> None:
        target, policy = self.target, self.target.subscription
        if self.ctx.directory.is_member(target.id, address):
            self.answer(address, f"Already a member of {target.address}",
                        [f"{address} is already a member of {target.address}."])
            self.note(f"join from <{address}>: already a member")
        elif policy is SubscriptionPolicy.CLOSED:
            self.closed(address)
        elif policy is SubscriptionPolicy.OPEN:
            self.joined(address)
        elif policy is SubscriptionPolicy.APPROVE:
            self.request(address)
        else:
            self.ask(address, join=True)

    def leave(self, address: str) -> None:
        if not self.ctx.directory.is_member(self.target.id, address):
            self.answer(address, f"Not a member of {self.target.address}",
                        [f"{address} is not a member of {self.target.address}."])
            self.note(f"leave from <{address}>: not a member")
            return
        self.ask(address, join=False)

    def confirm(self, sender: str, token: str) -> None:
        try:
            confirmed = self.step.tokens.check(self.target.address, token, self.ctx.now)
        except BadToken as exc:
            self.answer(sender, f"Not confirmed: {self.target.address}",
                        [f"Nothing was changed: {exc}."])
            self.note(f"confirm from <{sender}>: refused, {exc}")
            return
        self.confirmed(confirmed)

    def confirmed(self, confirmed: Confirmation) -> Outcome:
        """Carry out what a valid token confirms, under the list's policy now."""
        target, address = self.target, confirmed.address
        member = self.ctx.directory.is_member(target.id, address)
        if confirmed.action == "leave":
            if not member:
                self.answer(address, f"Not a member of {target.address}",
                            [f"{address} is not a member of {target.address}."])
                self.note(f"confirm leave of <{address}>: not a member")
                return "not_member"
            goodbye = mail.greeting(target, address, "", welcome=False, page_url=self.page,
                                    now=self.ctx.now)  # written first: it may fail
            self.ctx.memberships.append(
                MembershipChange(target.id, address, MembershipAction.LEAVE))
            self.send(address, goodbye)
            self.note(f"confirm leave of <{address}>: left, goodbye sent")
            return "left"
        if member:
            self.answer(address, f"Already a member of {target.address}",
                        [f"{address} is already a member of {target.address}."])
            self.note(f"confirm join of <{address}>: already a member")
            return "already"
        if target.subscription is SubscriptionPolicy.CLOSED:
            self.closed(address)
            return "closed"
        if target.subscription is SubscriptionPolicy.APPROVE:
            self.request(address)
            return "requested"
        self.joined(address, how="confirm join of")
        return "joined"

    # -- the outcomes ---------------------------------------------------------------

    def joined(self, address: str, how: str = "join from") -> None:
        target = self.target
        welcome = mail.greeting(target, address, "", welcome=True, page_url=self.page,
                                now=self.ctx.now)  # written first: it may fail
        self.ctx.memberships.append(MembershipChange(target.id, address, MembershipAction.JOIN))
        self.send(address, welcome)
        self.note(f"{how} <{address}>: joined, welcome sent")

    def ask(self, address: str, *, join: bool) -> None:
        target, now = self.target, self.ctx.now
        token = self.step.tokens.token(target.address, address, "join" if join else "leave",
                                       now)
        url = f"{self.page}/confirm/{token}" if self.page else ""
        self.send(address, mail.confirmation(target, address, token, join=join,
                                             confirm_url=url,
                                             days=round(self.step.tokens.max_age / 86_400, 1),
                                             now=now, original=self.header))
        self.note(f"{'join' if join else 'leave'} from <{address}>: confirmation sent")

    def request(self, address: str) -> None:
        target, ctx = self.target, self.ctx
        staff = ctx.directory.staff(target.id, (MemberRole.OWNER, MemberRole.MODERATOR))
        notice = mail.request_notice(target, staff, address, ctx.now) if staff else b""
        self.answer(address, f"Your request to join {target.address}",
                    [f"Your request to join {target.address} waits for its owners' "
                     "approval; you will hear from the list when they decide."])
        ctx.memberships.append(MembershipChange(target.id, address, MembershipAction.REQUEST))
        if notice:
            self.queue(notice, staff)
        self.note(f"join from <{address}>: held for approval, {len(staff)} owner(s) told")

    def closed(self, address: str) -> None:
        self.answer(address, f"{self.target.address} is closed",
                    [f"{self.target.address} takes no new members by request: its owners "
                     "add them.  Write to them if you want to join."])
        self.note(f"join from <{address}>: refused, the list is closed")

    # -- mail -----------------------------------------------------------------------

    def answer(self, to: str, subject: str, text: list[str]) -> None:
        self.send(to, mail.answer(self.target, to, subject, text, original=self.header,
                                  page_url=self.page, now=self.ctx.now))

    def send(self, to: str, content: bytes) -> None:
        """A mail to the address a command is about, counted against its daily bound."""
        self.queue(content, [to])
        self.ctx.directory.note_command_reply(to)
        self.ctx.answered.append(to)

    def queue(self, content: bytes, rcpts: list[str]) -> None:
        ctx, target = self.ctx, self.target
        generated = InboundMessage(
            id=ids.new_message_id(ctx.now), mail_from="", rcpt_tos=tuple(rcpts),
            blob=content_hash(content), size=len(content), received_at=ctx.now, peer="",
            helo="", protocol=GENERATED)
        ctx.generated.append(GeneratedMessage(generated, content))
        ctx.deliveries.extend(NewDelivery(generated.id, target.id, rcpt, target.priority)
                              for rcpt in rcpts)
