"""The S3 and SQS calls of the SES ingress, run by boto3 on threads of their own.

boto3 blocks, so every call runs on this module's thread pool, never on the event loop.
The endpoint, region and credentials come from the standard AWS configuration
(``AWS_ENDPOINT_URL``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, the credential chain);
MailFlow has no variables of its own for them.  Every call has botocore's connect and
read timeouts, so no wait is unbounded.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from mailflow.errors import MessageTooLarge

P = ParamSpec("P")
T = TypeVar("T")

MAX_SQS_MESSAGES = 10  # the most one ReceiveMessage returns
METADATA_BYTES = 1800  # S3 user metadata is at most 2 KB in all


class ObjectUnavailable(Exception):
    """An S3 object could not be read now: missing (yet), or S3 failed; worth a retry."""


@dataclass(frozen=True, slots=True)
class QueueMessage:
    """One SQS message as received: its body, the handle that deletes it, its tries."""

    body: str
    receipt_handle: str
    receive_count: int


class AwsClients:
    """S3 and SQS clients and the threads their calls run on."""

    def __init__(self, timeout: float, long_poll: float, threads: int) -> None:
        """``timeout`` bounds connecting and each read; an SQS receive may wait
        ``long_poll`` seconds more.  Build it with :meth:`create` (off the loop)."""
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="mailflow-aws")
        session = boto3.session.Session()
        retries: Any = {"max_attempts": 2, "mode": "standard"}
        self._s3 = session.client("s3", config=Config(
            connect_timeout=timeout, read_timeout=timeout, retries=retries))
        self._sqs = session.client("sqs", config=Config(
            connect_timeout=timeout, read_timeout=timeout + long_poll, retries=retries))

    @classmethod
    async def create(cls, call_timeout: float, long_poll: float, threads: int) -> AwsClients:
        """Clients built on a thread: botocore reads its service models from disk."""
        return await asyncio.to_thread(cls, call_timeout, long_poll, threads)

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Stop taking calls; a long poll in progress ends on its own within its wait."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- S3 --------------------------------------------------------------------------------

    async def get_object(self, bucket: str, key: str, max_size: int) -> bytes:
        """The object's bytes; :class:`ObjectUnavailable` when it is missing or S3 fails,
        :class:`MessageTooLarge` when it is larger than ``max_size``."""
        return await self._call(self._get_object, bucket, key, max_size)

    def _get_object(self, bucket: str, key: str, max_size: int) -> bytes:
        try:
            answer = self._s3.get_object(Bucket=bucket, Key=key)
            if int(answer.get("ContentLength", 0)) > max_size:
                answer["Body"].close()
                raise MessageTooLarge(f"message larger than {max_size} bytes")
            data: bytes = answer["Body"].read(max_size + 1)
            answer["Body"].close()
        except ClientError as exc:
            raise ObjectUnavailable(_client_error(exc)) from None
        except BotoCoreError as exc:
            raise ObjectUnavailable(str(exc)) from None
        if len(data) > max_size:
            raise MessageTooLarge(f"message larger than {max_size} bytes")
        return data

    async def add_metadata(self, bucket: str, key: str, metadata: dict[str, str]) -> None:
        """Add ``metadata`` to the object's own (S3 replaces it by copying in place)."""
        await self._call(self._add_metadata, bucket, key, metadata)

    def _add_metadata(self, bucket: str, key: str, metadata: dict[str, str]) -> None:
        head = self._s3.head_object(Bucket=bucket, Key=key)
        merged = {**head.get("Metadata", {}), **metadata}
        self._s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key},
                             Metadata=merged, MetadataDirective="REPLACE",
                             ContentType=head.get("ContentType", "application/octet-stream"))

    async def delete_object(self, bucket: str, key: str) -> None:
        await self._call(self._s3.delete_object, Bucket=bucket, Key=key)

    # -- SQS -------------------------------------------------------------------------------

    async def receive(self, queue_url: str, wait: int, visibility: int) -> list[QueueMessage]:
        """Up to ten messages, waiting up to ``wait`` seconds for the first (long poll)."""
        answer = await self._call(
            self._sqs.receive_message, QueueUrl=queue_url,
            MaxNumberOfMessages=MAX_SQS_MESSAGES, WaitTimeSeconds=wait,
            VisibilityTimeout=visibility, MessageSystemAttributeNames=["ApproximateReceiveCount"])
        return [QueueMessage(m["Body"], m["ReceiptHandle"],
                             int(m.get("Attributes", {}).get("ApproximateReceiveCount", 1)))
                for m in answer.get("Messages", [])]

    async def delete_messages(self, queue_url: str, receipt_handles: list[str]) -> None:
        """Delete up to ten messages in one call; raise if any was not deleted."""
        await self._call(self._batch, self._sqs.delete_message_batch, queue_url,
                         [{"Id": str(i), "ReceiptHandle": h}
                          for i, h in enumerate(receipt_handles)])

    async def extend_visibility(self, queue_url: str, receipt_handles: list[str],
                                seconds: int) -> None:
        """Make up to ten messages invisible for ``seconds`` from now, in one call."""
        await self._call(self._batch, self._sqs.change_message_visibility_batch, queue_url,
                         [{"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": seconds}
                          for i, h in enumerate(receipt_handles)])

    @staticmethod
    def _batch(call: Callable[..., Any], queue_url: str, entries: list[dict[str, Any]]
               ) -> None:
        failed = call(QueueUrl=queue_url, Entries=entries).get("Failed", [])
        if failed:
            codes = ", ".join(sorted({str(f.get("Code")) for f in failed}))
            raise RuntimeError(f"{len(failed)} of {len(entries)} failed ({codes})")


def _client_error(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip()
