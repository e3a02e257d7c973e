"""Moderation of held posts: approve, reject, discard, and the relay's periodic sweep.

A held post is a ``messages`` row whose status is ``held`` (the accept chain's hold:
a posting policy or a filter rule), with a ``held`` event per list saying why.

* **The sweep** (:class:`ModerationSweep`, in the relay) tells each list's owners and
  moderators of every new held post, by mail with the post attached, and records the
  post in ``held_posts`` in the same transaction (so each notice is sent once, and the
  post's expiry is known); then it discards the posts whose ``hold_days`` are over,
  with an ``expired`` event, and removes the requests to join an ``approve`` list that
  waited as long (an ``expired`` event, and a notice to the address: as a rejection,
  it must not be left waiting for an answer that never comes).  All in bounded
  batches.
* **The commands** (:class:`Moderation`, for the CLI and the REST API):
  approve (the post is expanded as if it had just arrived; ``add_member`` adds its
  author to the lists first), reject (dropped, and its author told why by a notice
  queued in the same transaction), discard (dropped silently).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

from mailflow import addresses, headers, ids
from mailflow.blobs import content_hash
from mailflow.clock import Clock
from mailflow.errors import InvalidInput
from mailflow.model import (
    GENERATED,
    Event,
    GeneratedMessage,
    HeldPost,
    InboundMessage,
    ListKind,
    MailingList,
    NewDelivery,
)
from mailflow.pipeline.moderation import moderator_notice, post_author, rejection_notice
from mailflow.pipeline.process.autoreply import automatic_reason
from mailflow.pipeline.send.list_links import list_page_url
from mailflow.pipeline.subscription_mail import expiry_notice
from mailflow.store import Repository
from mailflow.store.runner import StoreRunner
from mailflow.store.subscriptions import ExpiredRequest

log = logging.getLogger(__name__)

T = TypeVar("T")

DAY: Final = 86_400.0
SWEEP_BATCH: Final = 100   # held posts announced or expired, requests expired, per transaction
SWEEP_ROUNDS: Final = 10   # transactions of each kind per sweep, at most
REASON_MAX_LENGTH: Final = 2000

ReadContent = Callable[[InboundMessage], bytes]


def validated_reason(text: str) -> str:
    """What a moderator tells the author: text (line breaks allowed, it goes into the
    body), no other control characters, bounded."""
    reason = text.strip()
    if len(reason) > REASON_MAX_LENGTH:
        raise InvalidInput(f"reason too long ({len(reason)} characters, at most "
                           f"{REASON_MAX_LENGTH})")
    for line in reason.splitlines():
        if headers.unsafe_text(line.replace("\t", " ")) is not None:
            raise InvalidInput("invalid reason: it contains a control character")
    return reason


def _lists_of(repo: Repository, message: InboundMessage) -> list[MailingList]:
    """The lists and aliases a held message is held for (its recipients), once each."""
    found: dict[int, MailingList] = {}
    for rcpt in message.rcpt_tos:
        resolution = repo.resolve(addresses.canonical(rcpt))
        target = resolution.mailing_list
        if resolution.kind == "list" and target is not None and target.id > 0:
            found.setdefault(target.id, target)
    return list(found.values())


def _reason_for(reasons: dict[str, str], target: MailingList) -> str:
    for rcpt, reason in reasons.items():
        if addresses.untagged(rcpt)[0] == target.address or rcpt == target.address:
            return reason
    return "; ".join(reasons.values())


def announcement(repo: Repository, message: InboundMessage, reasons: dict[str, str],
                 raw: bytes, now: float
                 ) -> tuple[list[HeldPost], list[GeneratedMessage], list[NewDelivery]]:
    """The held-post rows of a message and the notices to its lists' moderators.

    Blocking (reads the store).
    """
    header, _ = headers.split_message(raw)
    author = post_author(message.mail_from, header)
    targets = _lists_of(repo, message)
    moderators = repo.moderators([t.id for t in targets])
    posts: list[HeldPost] = []
    notices: list[GeneratedMessage] = []
    planned: list[NewDelivery] = []
    for target in targets:
        post = HeldPost(message.id, target.id, target.address, author,
                        _reason_for(reasons, target), message.received_at
                        + target.hold_days * DAY)
        posts.append(post)
        told = moderators.get(target.id, [])
        if not told:
            continue
        content = moderator_notice(post, message, target, told, raw, now)
        notice = _generated(content, told, now)
        notices.append(GeneratedMessage(notice, content))
        planned.extend(NewDelivery(notice.id, target.id, m, target.priority) for m in told)
    return posts, notices, planned


def _generated(content: bytes, rcpts: Sequence[str], now: float) -> InboundMessage:
    return InboundMessage(id=ids.new_message_id(now), mail_from="", rcpt_tos=tuple(rcpts),
                          blob=content_hash(content), size=len(content), received_at=now,
                          peer="", helo="", protocol=GENERATED)


def content_reader(repo: Repository, read_file: Callable[[str], bytes]) -> ReadContent:
    """A stored message's bytes: from its blob row when small, else its file."""

    def read(message: InboundMessage) -> bytes:
        stored = repo.stored_body(message.blob)
        return stored if stored is not None else read_file(message.blob)

    return read


class Moderation:
    """What a moderator does to a held post (blocking: the CLI calls it directly)."""

    def __init__(self, repo: Repository, clock: Clock, read: ReadContent) -> None:
        self.repo = repo
        self.clock = clock
        self.read = read

    def approve(self, message_id: str, *, add_member: bool = False) -> list[str]:
        """Deliver a held post to its lists; with ``add_member`` add its author to them
        first (lists only, not aliases).  Returns the lists the author was added to."""
        message_id = message_id.strip()
        added: list[str] = []
        if add_member:
            message, _ = self.repo.held_message(message_id)
            header, _ = headers.split_message(self.read(message))
            author = post_author(message.mail_from, header)
            if not author:
                raise InvalidInput(f"held message {message_id} has no author to add (no "
                                   "From: address, or a robot's)")
            for target in _lists_of(self.repo, message):
                if target.kind is ListKind.LIST:
                    self.repo.add_members(target.address, [author], self.clock.now())
                    added.append(target.address)
        self.repo.release_held(message_id, self.clock.now())
        return added

    def reject(self, message_id: str, reason: str = "") -> str:
        """Drop a held post and tell its author why; returns whom ('' for nobody: a
        robot, or no author)."""
        message_id, reason = message_id.strip(), validated_reason(reason)
        message, _ = self.repo.held_message(message_id)
        header, _ = headers.split_message(self.read(message))
        author = post_author(message.mail_from, header)
        targets = _lists_of(self.repo, message)
        now = self.clock.now()
        notices: list[GeneratedMessage] = []
        planned: list[NewDelivery] = []
        if author and targets:
            target = targets[0]
            content = rejection_notice(author, target, header, reason, now)
            notice = _generated(content, [author], now)
            notices.append(GeneratedMessage(notice, content))
            planned.append(NewDelivery(notice.id, target.id, author, target.priority))
        self.repo.reject_held(message_id, reason, notices, planned, now)
        return author if notices else ""

    def discard(self, message_id: str) -> None:
        self.repo.discard_held(message_id.strip(), self.clock.now())


class ModerationSweep:
    """The relay's side: announce new held posts, expire old ones and old requests to
    join, every ``interval``.  ``public_url``: the relay's, for the list's page in the
    notice of an expired request ('' for none), as the list commands' answers have it."""

    def __init__(self, runner: StoreRunner, clock: Clock, read: ReadContent,
                 interval: float, on_queued: Callable[[], None] | None = None,
                 public_url: str = "") -> None:
        self.runner = runner
        self.clock = clock
        self.read = read
        self.interval = interval
        self.on_queued = on_queued
        self.public_url = public_url

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # the next round tries again
                log.exception("moderation sweep failed", extra={"action": "moderation_error"})
            await asyncio.sleep(self.interval)

    async def sweep(self) -> tuple[int, int, int]:
        """One round; returns (posts announced, posts expired, requests expired)."""
        announced = await self._in_batches(self._announce_batch)
        expired = await self._in_batches(self._expire_held_batch)
        for message_id in expired:
            log.info("held post %s expired unmoderated; discarded", message_id,
                     extra={"action": "held_expired", "queue_id": message_id})
        requests = await self._in_batches(self._expire_requests_batch)
        for item, _ in requests:
            request = item.request
            log.info("request %d of <%s> to join %s expired unanswered after %d "
                     "day(s); removed", request.id, request.address,
                     request.list_address, item.mailing_list.hold_days,
                     extra={"action": "request_expired", "request_id": request.id,
                            "list": request.list_address, "address": request.address})
        if (announced or any(told for _, told in requests)) and self.on_queued is not None:
            self.on_queued()
        return len(announced), len(expired), len(requests)

    async def _in_batches(self, batch: Callable[[float], list[T]]) -> list[T]:
        """``batch`` in transactions of its own until one does less than
        :data:`SWEEP_BATCH`, at most :data:`SWEEP_ROUNDS` of them; what they did."""
        done: list[T] = []
        for _ in range(SWEEP_ROUNDS):
            items = await self.runner.write(batch, self.clock.now())
            done += items
            if len(items) < SWEEP_BATCH:
                break
        return done

    def _expire_held_batch(self, now: float) -> list[str]:
        return self.runner.repo.expire_held(now, SWEEP_BATCH)

    def _expire_requests_batch(self, now: float) -> list[tuple[ExpiredRequest, bool]]:
        """Remove up to :data:`SWEEP_BATCH` requests older than their list's
        ``hold_days``, with their events and notices in the same transaction (so a
        notice is neither lost nor sent twice); returns them, each with whether its
        address was told.

        The notice is the rejection's (from the list's ``-request`` address, the null
        sender, ``Auto-Submitted``), not counted against the address's daily bound on
        answers: there is at most one per request, and each request came from a
        command that was.  A robot address, or one an owner has added meanwhile, is
        not told.  Blocking, on a store thread.
        """
        generated: list[GeneratedMessage] = []
        planned: list[NewDelivery] = []
        events: list[Event] = []
        dropped: list[tuple[ExpiredRequest, bool]] = []
        with self.runner.repo.ingest_transaction() as tx:
            for item in tx.expire_requests(now, SWEEP_BATCH):
                target, address = item.mailing_list, item.request.address
                days = target.hold_days
                told = not item.member and automatic_reason(address, b"") is None
                if told:
                    content = expiry_notice(target, address, days, now=now,
                                            page_url=list_page_url(self.public_url,
                                                                   target.address))
                    notice = _generated(content, [address], now)
                    generated.append(GeneratedMessage(notice, content))
                    planned.append(NewDelivery(notice.id, target.id, address,
                                               target.priority))
                events.append(Event("expired", f"{target.address}: request of <{address}> "
                                    f"to join expired unanswered after {days} day(s); "
                                    + ("the address was told" if told else
                                       "a member already" if item.member else
                                       "not told, a robot address")))
                dropped.append((item, told))
            tx.insert_generated(generated, now)
            tx.insert_deliveries(planned, now)
            tx.add_events(events, now)
        return dropped

    def _announce_batch(self, now: float) -> list[str]:
        """Announce up to :data:`SWEEP_BATCH` held posts (blocking, on a store thread);
        their ids."""
        repo = self.runner.repo
        batch = repo.unannounced_held(SWEEP_BATCH)
        for message, reasons in batch:
            try:
                raw = self.read(message)
            except FileNotFoundError:
                raw = b""  # announced without the post: the rows still make it expire
            posts, notices, planned = announcement(repo, message, reasons, raw, now)
            if not posts:  # held for nothing that is a list any more: expires at once
                posts = [HeldPost(message.id, 0, "", "", "; ".join(reasons.values()), now)]
            if repo.announce_held(posts, notices, planned, now):
                log.info("held post %s: %d moderator notice(s)", message.id, len(notices),
                         extra={"action": "held_announced", "queue_id": message.id})
        return [message.id for message, _ in batch]
