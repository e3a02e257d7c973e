"""Moderation of held posts: approve, reject, discard, and the relay's periodic sweep.

A held post is a ``messages`` row whose status is ``held`` (the accept chain's hold:
a posting policy or a filter rule), with a ``held`` event per list saying why.

* **The sweep** (:class:`ModerationSweep`, in the relay) tells each list's owners and
  moderators of every new held post, by mail with the post attached, and records the
  post in ``held_posts`` in the same transaction (so each notice is sent once, and the
  post's expiry is known); then it discards the posts whose ``hold_days`` are over,
  with an ``expired`` event.  Both in bounded batches.
* **The commands** (:class:`Moderation`, for the CLI and the REST API):
  approve (the post is expanded as if it had just arrived; ``add_member`` adds its
  author to the lists first), reject (dropped, and its author told why by a notice
  queued in the same transaction), discard (dropped silently).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Final

from mailflow import addresses, headers, ids
from mailflow.blobs import content_hash
from mailflow.clock import Clock
from mailflow.errors import InvalidInput
from mailflow.model import (
    GENERATED,
    GeneratedMessage,
    HeldPost,
    InboundMessage,
    ListKind,
    MailingList,
    NewDelivery,
)
from mailflow.pipeline.moderation import moderator_notice, post_author, rejection_notice
from mailflow.store import Repository
from mailflow.store.runner import StoreRunner

log = logging.getLogger(__name__)

DAY: Final = 86_400.0
SWEEP_BATCH: Final = 100   # held posts announced or expired per transaction
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
    """The relay's side: announce new held posts, expire old ones, every ``interval``."""

    def __init__(self, runner: StoreRunner, clock: Clock, read: ReadContent,
                 interval: float, on_queued: Callable[[], None] | None = None) -> None:
        self.runner = runner
        self.clock = clock
        self.read = read
        self.interval = interval
        self.on_queued = on_queued

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # the next round tries again
                log.exception("moderation sweep failed", extra={"action": "moderation_error"})
            await asyncio.sleep(self.interval)

    async def sweep(self) -> tuple[int, int]:
        """One round; returns (posts announced, posts expired)."""
        announced = expired = 0
        for _ in range(SWEEP_ROUNDS):
            count = await self.runner.write(self._announce_batch, self.clock.now())
            announced += count
            if count < SWEEP_BATCH:
                break
        for _ in range(SWEEP_ROUNDS):
            gone = await self.runner.write(self.runner.repo.expire_held, self.clock.now(),
                                           SWEEP_BATCH)
            for message_id in gone:
                log.info("held post %s expired unmoderated; discarded", message_id,
                         extra={"action": "held_expired", "queue_id": message_id})
            expired += len(gone)
            if len(gone) < SWEEP_BATCH:
                break
        if announced and self.on_queued is not None:
            self.on_queued()
        return announced, expired

    def _announce_batch(self, now: float) -> int:
        """Announce up to :data:`SWEEP_BATCH` held posts (blocking, on a store thread)."""
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
        return len(batch)
