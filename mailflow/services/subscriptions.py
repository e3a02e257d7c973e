"""Subscriptions outside the mail path: the list's page and ``mailflow requests``.

Both run the list commands step's own code (:class:`~mailflow.pipeline.process.commands.
CommandRun`) in a write transaction of their own, with no message: the page's form
mails the same confirmation a ``subscribe`` command gets, its button does what a
reply to that confirmation does, and an owner's approval welcomes the new member as an
``open`` list would.  What they decide (roster changes, mail, ``command`` events) is
written as the processing chain writes it.  Blocking: the web calls it on the store's
threads, the CLI directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

from mailflow.clock import Clock
from mailflow.confirm_tokens import Confirmation
from mailflow.errors import NotFound
from mailflow.model import Event, InboundMessage, ListKind, MailingList, SubscriptionRequest
from mailflow.pipeline import subscription_mail as mail
from mailflow.pipeline.context import ProcessContext
from mailflow.pipeline.process.commands import CommandRun, ListCommands, Outcome
from mailflow.services.event_log import note_events
from mailflow.services.moderation import validated_reason
from mailflow.store import Repository
from mailflow.store.repository import WriteTransaction

T = TypeVar("T")

# What a run without a message is attributed to: its events name no message.
_NO_MESSAGE: Final = InboundMessage(id="", mail_from="", rcpt_tos=(), blob="", size=0,
                                    received_at=0.0, peer="", helo="", protocol="")


class Subscriptions:
    """``step``: the relay's list commands step (its tokens, public URL, daily bound)."""

    def __init__(self, repo: Repository, clock: Clock, step: ListCommands) -> None:
        self.repo = repo
        self.clock = clock
        self.step = step

    def mailing_list(self, address: str) -> MailingList:
        found = self.repo.find_list(address.strip().lower())
        if found is None or found.kind is not ListKind.LIST:
            raise NotFound("list", address)
        return found

    def check(self, target: MailingList, token: str) -> Confirmation:
        """What ``token`` confirms on ``target`` (``BadToken`` if nothing)."""
        return self.step.tokens.check(target.address, token, self.clock.now())

    def ask(self, target: MailingList, address: str) -> bool:
        """Mail ``address`` a confirmation of joining ``target`` (the page's form).

        Whether it is a member already changes nothing here (the page must not tell);
        returns False when nothing was sent: the list is closed, or the address had
        its answers for the day.
        """
        def run(tx: WriteTransaction, command: CommandRun) -> bool:
            now = command.ctx.now
            if tx.directory.command_replies(address, now) >= self.step.max_replies:
                command.note(f"join on the page for <{address}>: not sent, "
                             f"{self.step.max_replies} mails to that address today already")
                return False
            command.ask(address, join=True)
            return True

        return self._run(target, run)

    def confirm(self, target: MailingList, confirmed: Confirmation) -> Outcome:
        """Carry out a confirmation (the page's button); mails the welcome or goodbye."""
        return self._run(target, lambda _, command: command.confirmed(confirmed))

    # -- requests to join an ``approve`` list -----------------------------------------

    def requests(self, list_address: str | None = None) -> list[SubscriptionRequest]:
        return self.repo.subscription_requests(
            None if list_address is None else self.mailing_list(list_address).address)

    def approve(self, request_id: int) -> SubscriptionRequest:
        """Add the member who asked, and welcome them."""
        def run(tx: WriteTransaction, command: CommandRun) -> SubscriptionRequest:
            request = self._take(tx, request_id)
            command.joined(request.address, how="request approved for")
            return request

        return self._run(self._target(request_id), run)

    def reject(self, request_id: int, reason: str = "") -> SubscriptionRequest:
        """Refuse a request, and tell the address why."""
        reason = validated_reason(reason)

        def run(tx: WriteTransaction, command: CommandRun) -> SubscriptionRequest:
            request = self._take(tx, request_id)
            command.send(request.address, mail.refusal_notice(
                command.target, request.address, reason, page_url=command.page,
                now=command.ctx.now))
            command.note(f"request of <{request.address}> rejected")
            return request

        return self._run(self._target(request_id), run)

    def _target(self, request_id: int) -> MailingList:
        found = next((r for r in self.repo.subscription_requests() if r.id == request_id),
                     None)
        if found is None:
            raise NotFound("request", str(request_id), f"no request {request_id} waiting")
        return self.mailing_list(found.list_address)

    @staticmethod
    def _take(tx: WriteTransaction, request_id: int) -> SubscriptionRequest:
        request = tx.take_request(request_id)
        if request is None:  # decided meanwhile
            raise NotFound("request", str(request_id), f"no request {request_id} waiting")
        return request

    def _run(self, target: MailingList,
                work: Callable[[WriteTransaction, CommandRun], T]) -> T:
        now = self.clock.now()
        with self.repo.ingest_transaction() as tx:
            ctx = ProcessContext(_NO_MESSAGE, tx.directory, now)
            result = work(tx, CommandRun(self.step, ctx, target))
            tx.insert_generated(ctx.generated, now)
            tx.insert_deliveries(ctx.deliveries, now)
            tx.apply_memberships(ctx.memberships, ctx.answered, now)
            events = [Event(e.kind, e.detail) for e in ctx.events]
            tx.add_events(events, now)
        note_events(events)
        return result

