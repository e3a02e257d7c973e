"""Amazon SES egress: SESv2 ``SendEmail`` with the copy as ``Content.Raw``.

Chosen by ``egress = "ses"`` or a ``ses:`` route (docs/aws.md, "Sending").  Where and as
whom come from the standard AWS configuration (``AWS_REGION``, ``AWS_ENDPOINT_URL``, the
credentials chain); how, from the ``ses_*`` settings.

* The scheduler's transaction is sent in calls of at most :data:`MAX_DESTINATIONS`
  envelope recipients (SES's limit per message), each answered for its own recipients.
* The envelope sender (the list's bounce address or the forward's SRS address) becomes
  ``FeedbackForwardingEmailAddress``, where SES mails bounces and complaints, as an
  SMTP next hop would have sent them to MAIL FROM; SES's own MAIL FROM is the account's.
* Header fields SES refuses are taken out first (:mod:`mailflow.egress.ses_headers`).
* A **token bucket** keeps the calls within the account's maximum send rate (SES counts
  each recipient), from ``GetAccount`` or ``ses_max_send_rate``: this process's own, or
  on PostgreSQL one row every relay of the store reserves from (``store/send_pace.py``),
  so that several workers together keep the account's rate.
* Answers become SMTP-style replies, so the scheduler's rules apply unchanged: throttling,
  5xx and no answer at all are ``451 4.4.1`` (deferred with the retry backoff); what the
  owner must fix (``MailFromDomainNotVerifiedException``, sending paused, a missing
  configuration set, credentials refused or lacking a permission) is ``451 4.7.1``,
  deferred up to ``max_delivery_age``;
  ``MessageRejected`` and other refusals of the message are ``554 5.7.1``, failed.
* Each delivered reply carries SES's MessageId, which the store keeps on the delivery
  (``provider_message_id``) for the bounce and complaint notifications that name it.

boto3 is synchronous, so its calls run in a thread pool of ``ses_concurrency`` threads,
never on the event loop; each has botocore's connect and read timeouts and an overall
bound on top, and botocore's own retries are off (the scheduler retries, with backoff
and the maximum age).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from mailflow.egress.base import PerContent, RecipientReply
from mailflow.egress.ses_headers import ses_ready
from mailflow.egress.ses_options import SesOptions
from mailflow.egress.token_bucket import SendPace, TokenBucket
from mailflow.errors import ConfigurationError
from mailflow.memory import item_limit

log = logging.getLogger(__name__)

MAX_DESTINATIONS = 50  # recipients SES takes per message
MAX_RAW_BYTES = 40 * 1024 * 1024  # SESv2's limit for a raw message, after base64
DEFAULT_SEND_RATE = 1.0  # a sandbox account's rate: used until GetAccount answers
RATE_RECHECK = 600.0  # seconds before a failed GetAccount is asked again
RATE_MARGIN = 0.95  # of the account's rate: SES's own clock and ours differ a little

# Error codes (``Error.Code``) SES answers with, by what becomes of the delivery.
THROTTLED = frozenset({"TooManyRequestsException", "LimitExceededException", "Throttling",
                       "ThrottlingException", "RequestTimeout", "ServiceUnavailable",
                       "InternalFailure", "InternalServerError"})
# What the owner must fix (the account, a configuration set, the credentials or their
# permissions): no copy is to blame, so none fails before ``max_delivery_age``.
ACCOUNT_PROBLEMS = frozenset({"MailFromDomainNotVerifiedException",
                              "MailFromDomainNotVerified", "SendingPausedException",
                              "AccountSendingPausedException", "AccountSuspendedException",
                              "ConfigurationSetSendingPausedException", "NotFoundException",
                              "ConfigurationSetDoesNotExist", "AccessDeniedException",
                              "AccessDenied", "UnrecognizedClientException",
                              "InvalidClientTokenId", "SignatureDoesNotMatch",
                              "ExpiredToken", "ExpiredTokenException"})


class SesEgress:
    name = "ses"

    def __init__(self, options: SesOptions) -> None:
        self.options = options
        self._client: Any = None
        self._threads: ThreadPoolExecutor | None = None
        self._slots = asyncio.Semaphore(options.concurrency)
        rate = options.max_send_rate or DEFAULT_SEND_RATE
        self._bucket: SendPace = (
            TokenBucket(rate, max_wait=options.timeout) if options.pace is None
            else options.pace(self.name, rate, options.timeout))
        self._rate_known = options.max_send_rate > 0
        self._rate_retry_at = 0.0  # monotonic time GetAccount may be asked (again)
        self._rate_lock = asyncio.Lock()
        # The SES-ready copy of each content with the envelope sender it was made for
        # (a Sender field may stay for it): the scheduler sends one content many times.
        self._ready: PerContent[tuple[str, bytes]] = PerContent(
            options.payload_cache,
            lambda content, ready: len(content) + (0 if ready[1] is content else len(ready[1])),
            max_item=item_limit(options.payload_cache))

    async def start(self) -> None:
        """Build the client (in a thread: it reads files); no request is made, so an
        unreachable SES does not stop the relay from starting, but a configuration
        boto3 cannot use (no region) does."""
        self._threads = ThreadPoolExecutor(self.options.concurrency,
                                           thread_name_prefix="ses")
        timeout = self.options.timeout
        config = Config(connect_timeout=timeout, read_timeout=timeout,
                        retries={"total_max_attempts": 1},
                        max_pool_connections=self.options.concurrency)
        try:
            self._client = await self._in_thread(
                lambda: boto3.session.Session().client("sesv2", config=config))
        except BotoCoreError as exc:  # no region, a broken AWS config file …
            raise ConfigurationError(f"Amazon SES egress: {exc} (set AWS_REGION and the "
                                     "AWS credentials; see docs/aws.md)") from None

    async def _in_thread(self, call: Any) -> Any:
        assert self._threads is not None, "start() first"
        loop = asyncio.get_running_loop()
        # botocore's connect and read timeouts bound each call; this bounds the rest.
        async with asyncio.timeout(3 * self.options.timeout):
            return await loop.run_in_executor(self._threads, call)

    async def send(self, mail_from: str, recipients: Sequence[str],
                   content: bytes) -> list[RecipientReply]:
        raw = self._ses_ready(content, mail_from)
        if len(raw) * 4 // 3 > MAX_RAW_BYTES:
            return [RecipientReply(r, 552, "5.3.4 message too large for Amazon SES (40 MB)")
                    for r in recipients]
        await self._learn_rate()
        chunks = [recipients[i:i + MAX_DESTINATIONS]
                  for i in range(0, len(recipients), MAX_DESTINATIONS)]
        answers = await asyncio.gather(*(self._send_chunk(mail_from, chunk, raw)
                                         for chunk in chunks))
        return [reply for answer in answers for reply in answer]

    def _ses_ready(self, content: bytes, mail_from: str) -> bytes:
        kept = self._ready.get(content)
        if kept is not None and kept[0] == mail_from:
            return kept[1]
        ready = ses_ready(content, mail_from)
        self._ready.put(content, (mail_from, ready))
        return ready

    async def _send_chunk(self, mail_from: str, recipients: Sequence[str],
                          raw: bytes) -> list[RecipientReply]:
        request: dict[str, Any] = {"Destination": {"ToAddresses": list(recipients)},
                                   "Content": {"Raw": {"Data": raw}}}
        if self.options.configuration_set:
            request["ConfigurationSetName"] = self.options.configuration_set
        if self.options.feedback_forwarding and "@" in mail_from:
            request["FeedbackForwardingEmailAddress"] = mail_from
        async with self._slots:
            if not await self._bucket.take(len(recipients)):
                return _all(recipients, 451, "4.4.1 Amazon SES send rate reached, "
                                             "try again later")
            try:
                answer = await self._in_thread(lambda: self._client.send_email(**request))
            except ClientError as exc:
                return await self._refused(recipients, exc)
            except (BotoCoreError, TimeoutError, OSError) as exc:
                return _all(recipients, 451, f"4.4.1 Amazon SES unreachable: "
                                             f"{type(exc).__name__}: {exc}")
        ses_id = str(answer.get("MessageId", ""))
        return [RecipientReply(r, 250, f"2.0.0 accepted by Amazon SES as {ses_id}", ses_id)
                for r in recipients]

    async def _refused(self, recipients: Sequence[str], exc: ClientError
                       ) -> list[RecipientReply]:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        text = " ".join(str(error.get("Message", "")).split())[:300]
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in THROTTLED or status == 429 or status >= 500:
            # Everyone waits about a second: the account is over its rate.
            await self._bucket.throttled()
            log.warning("Amazon SES throttled or failed a send: %s %s", code, text,
                        extra={"action": "ses_throttled"})
            return _all(recipients, 451, f"4.4.1 Amazon SES: {code} {text}".rstrip())
        if code in ACCOUNT_PROBLEMS:
            log.error("Amazon SES cannot send for this account: %s %s", code, text,
                      extra={"action": "ses_account"})
            return _all(recipients, 451, f"4.7.1 Amazon SES: {code} {text}".rstrip())
        return _all(recipients, 554, f"5.7.1 Amazon SES refused the message: {code} "
                                     f"{text}".rstrip())

    async def _learn_rate(self) -> None:
        """The account's max send rate, asked once (again after a failure, later).

        Sends wait for the answer while it is asked, so none is paced at the guess.
        """
        if self._rate_known or time.monotonic() < self._rate_retry_at:
            return
        async with self._rate_lock:
            if self._rate_known or time.monotonic() < self._rate_retry_at:
                return
            try:
                account = await self._in_thread(self._client.get_account)
                rate = float(account["SendQuota"]["MaxSendRate"])
            except (ClientError, BotoCoreError, TimeoutError, OSError, KeyError,
                    TypeError, ValueError) as exc:
                self._rate_retry_at = time.monotonic() + RATE_RECHECK
                log.warning("Amazon SES GetAccount failed (%s): sending at %g per second "
                            "until it answers; set ses_max_send_rate to skip it", exc,
                            self._bucket.rate, extra={"action": "ses_rate_unknown"})
                return
            if rate > 0:
                self._bucket.set_rate(rate * RATE_MARGIN)
            self._rate_known = True
            log.info("Amazon SES: sending at up to %g per second", self._bucket.rate,
                     extra={"action": "ses_rate"})

    async def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None
        client, self._client = self._client, None
        if client is not None:
            client.close()
        self._ready.clear()


def _all(recipients: Sequence[str], code: int, text: str) -> list[RecipientReply]:
    return [RecipientReply(r, code, text) for r in recipients]
