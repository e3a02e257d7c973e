"""SQS ingress: one long-polling loop per queue of SES notifications.

A message is deleted only once its notification is handled (the mail durable, or refused
for good); while its batch is in hand, the batch's visibility is extended so no other
poller gets it.  A temporary failure leaves a message to come back when its visibility
ends; a message that cannot be read at all is left too, for the queue's redrive policy to
move aside after its ``maxReceiveCount`` (the log says how often it came).

Each received batch is handled as one: its messages at once, then one
``DeleteMessageBatch`` for those handled, so a message costs the relay an S3 read and a
tenth of three SQS calls.  The next batch is polled meanwhile, while fewer than
``MAX_IN_FLIGHT`` messages are in hand.
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
        self._batches: set[asyncio.Task[None]] = set()
        self._in_hand = 0  # messages
        self._room = asyncio.Event()  # set when a batch in hand is done

    async def run(self) -> None:
        """Poll until :meth:`stop`, then return once the batches in hand are handled
        (the caller bounds that wait)."""
        failures = 0
        try:
            while not self._stopping.is_set():
                while self._in_hand > MAX_IN_FLIGHT - MAX_SQS_MESSAGES:
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
                if batch:
                    self._in_hand += len(batch)
                    task = asyncio.create_task(self._handle_batch(batch))
                    self._batches.add(task)
                    task.add_done_callback(self._batches.discard)
        finally:
            if self._batches:
                # Shielded: cancelling the poll leaves the batches in hand to finish.
                await asyncio.shield(asyncio.gather(*self._batches, return_exceptions=True))

    def stop(self) -> None:
        """Poll no more; :meth:`run` returns once the batches in hand are handled."""
        self._stopping.set()

    async def _handle_batch(self, batch: list[QueueMessage]) -> None:
        handles = [message.receipt_handle for message in batch]
        keeper = asyncio.create_task(self._keep_invisible(handles))
        try:
            handled = await asyncio.gather(*(self._handle(message) for message in batch))
            done = [h for h, ok in zip(handles, handled, strict=True) if ok]
            if done:
                try:
                    await self.aws.delete_messages(self.queue_url, done)
                except Exception as exc:  # they come again, and are known then (duplicates)
                    log.warning("cannot delete %d handled message(s) from %s: %s", len(done),
                                self.queue_url, exc, extra={"action": "sqs_delete_failed"})
        finally:
            keeper.cancel()
            self._in_hand -= len(batch)
            self._room.set()

    async def _handle(self, message: QueueMessage) -> bool:
        """Whether the message is handled (to be deleted)."""
        try:
            await self.notifications.handle(
                notification_from_body(message.body, self.topics))
        except BadNotification as exc:
            log.error("unreadable message in %s (received %d times), left for the redrive "
                      "policy: %s", self.queue_url, message.receive_count, exc,
                      extra={"action": "sqs_poison"})
            return False
        except SmtpReplyError as error:
            log.info("message in %s not taken now (received %d times): %s", self.queue_url,
                     message.receive_count, error.reason, extra={"action": "ses_deferred"})
            return False
        except Exception:
            log.exception("message in %s failed (received %d times)", self.queue_url,
                          message.receive_count, extra={"action": "sqs_error"})
            return False
        return True

    async def _keep_invisible(self, handles: list[str]) -> None:
        """Push the batch's visibility out every half period while it is in hand."""
        while True:
            await asyncio.sleep(self.visibility / 2)
            try:
                await self.aws.extend_visibility(self.queue_url, handles, self.visibility)
            except Exception as exc:
                log.warning("cannot extend the visibility of messages in %s: %s",
                            self.queue_url, exc, extra={"action": "sqs_visibility_failed"})
