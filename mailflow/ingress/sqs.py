"""SQS ingress: one long-polling loop per queue of SES notifications.

A message is deleted only once its notification is handled (the mail durable, or refused
for good); while that takes, its visibility is extended so no other poller gets it.  A
temporary failure leaves it to come back when its visibility ends; a message that cannot
be read at all is left too, for the queue's redrive policy to move aside after its
``maxReceiveCount`` (the log says how often it came).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from mailflow.errors import SmtpReplyError
from mailflow.ingress.aws import MAX_SQS_MESSAGES, AwsClients, QueueMessage
from mailflow.ingress.ses import SesNotifications
from mailflow.ingress.ses_notification import BadNotification, notification_from_body

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0  # seconds between two polls of a queue that keeps failing
MAX_IN_FLIGHT = 40  # messages of one queue handled at once (each may hold an S3 read)
STOP_GRACE = 10.0  # seconds the notifications in hand get to finish when the relay stops


class SqsPoller:
    """Polls one queue until stopped."""

    def __init__(self, aws: AwsClients, queue_url: str, notifications: SesNotifications, *,
                 wait: int, visibility: int, topics: frozenset[str]) -> None:
        self.aws = aws
        self.queue_url = queue_url
        self.notifications = notifications
        self.wait = wait
        self.visibility = visibility
        self.topics = topics
        self._stopping = asyncio.Event()
        self._in_hand: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()  # set when a message in hand is done

    async def run(self) -> None:
        """Poll while fewer than MAX_IN_FLIGHT messages are in hand, so the next batch
        is on its way while the previous ones are stored; on :meth:`stop`, return once
        the messages in hand are handled (the caller bounds that wait)."""
        failures = 0
        try:
            while not self._stopping.is_set():
                while len(self._in_hand) > MAX_IN_FLIGHT - MAX_SQS_MESSAGES:
                    self._room.clear()
                    await self._room.wait()
                try:
                    batch = await self.aws.receive(self.queue_url, self.wait, self.visibility)
                except Exception as exc:  # network, throttling, credentials: try again later
                    failures += 1
                    delay = min(MAX_BACKOFF, 0.5 * 2 ** failures)
                    log.warning("cannot poll %s (%d failures in a row, next try in %g s): %s",
                                self.queue_url, failures, delay, exc,
                                extra={"action": "sqs_poll_failed"})
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), delay)
                    continue
                failures = 0
                for message in batch:
                    task = asyncio.create_task(self._handle(message))
                    self._in_hand.add(task)
                    task.add_done_callback(self._done)
        finally:
            if self._in_hand:
                # Shielded: cancelling the poll leaves a notification in hand to finish.
                await asyncio.shield(asyncio.gather(*self._in_hand, return_exceptions=True))

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_hand.discard(task)
        self._room.set()

    def stop(self) -> None:
        """Poll no more; :meth:`run` returns once the messages in hand are handled."""
        self._stopping.set()

    async def _handle(self, message: QueueMessage) -> None:
        keeper = asyncio.create_task(self._keep_invisible(message.receipt_handle))
        try:
            await self.notifications.handle(
                notification_from_body(message.body, self.topics))
        except BadNotification as exc:
            log.error("unreadable message in %s (received %d times), left for the redrive "
                      "policy: %s", self.queue_url, message.receive_count, exc,
                      extra={"action": "sqs_poison"})
            return
        except SmtpReplyError as error:
            log.info("message in %s not taken now (received %d times): %s", self.queue_url,
                     message.receive_count, error.reason, extra={"action": "ses_deferred"})
            return
        except Exception:
            log.exception("message in %s failed (received %d times)", self.queue_url,
                          message.receive_count, extra={"action": "sqs_error"})
            return
        finally:
            keeper.cancel()
        try:
            await self.aws.delete_message(self.queue_url, message.receipt_handle)
        except Exception as exc:  # it comes again, and is known then (a duplicate)
            log.warning("cannot delete a handled message from %s: %s", self.queue_url, exc,
                        extra={"action": "sqs_delete_failed"})

    async def _keep_invisible(self, receipt_handle: str) -> None:
        """Push the message's visibility out every half period while it is handled."""
        while True:
            await asyncio.sleep(self.visibility / 2)
            try:
                await self.aws.extend_visibility(self.queue_url, receipt_handle,
                                                 self.visibility)
            except Exception as exc:
                log.warning("cannot extend a message's visibility in %s: %s", self.queue_url,
                            exc, extra={"action": "sqs_visibility_failed"})
