"""Message bodies in an S3-compatible object store, for relays on several hosts.

The same contract as the file store (``mailflow.blobs.BlobStore``): content
addressed by SHA-256, written before the database may refer to it (an acknowledged PUT
is durable: S3 answers 200 only once the object is stored redundantly), read back by
hash, deleted by the garbage collector once the database says no message needs it.
Several relays share one bucket as they share one PostgreSQL, so a body one relay took
in is there for whichever relay sends it.

boto3 is synchronous: every call here runs on a thread of the caller's (the blob writer,
``asyncio.to_thread`` for reads), never on the event loop, and each has a connect and
read timeout.  A batch of new bodies is PUT in parallel, a few at a time.  boto3 is
imported only by a relay configured with ``blob_url = "s3://…"``: it costs tens of MB.
Endpoint, region and credentials come from the standard AWS configuration
(``AWS_ENDPOINT_URL`` for MinIO, Ceph and others; ``AWS_REGION``; the credentials chain).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mailflow.blobs import KnownContents
from mailflow.memory import DEFAULT_BUDGET

PUT_PARALLELISM = 8
PROBLEM_TTL = 5.0  # seconds a readiness answer is kept
DELETE_BATCH = 1000  # DeleteObjects' limit
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0  # a 40 MB body on a slow link
ATTEMPTS = 4  # botocore's standard retry mode: throttling and 5xx, with backoff


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str  # "" or ending in "/"

    def key(self, digest: str) -> str:
        return f"{self.prefix}{digest[:2]}/{digest}"


def parse_blob_url(url: str) -> S3Location:
    """``s3://bucket[/prefix]`` as a location; ValueError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"{url!r} is not s3://BUCKET[/PREFIX]")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"{url!r}: no credentials, query or fragment in a blob URL "
                         "(credentials come from the standard AWS configuration)")
    prefix = parts.path.strip("/")
    return S3Location(parts.netloc, f"{prefix}/" if prefix else "")


class S3Error(OSError):
    """An S3 call failed (after botocore's retries): unreachable, refused, throttled."""


@contextmanager
def _s3_errors(store: str) -> Iterator[None]:
    """botocore's errors as :class:`S3Error`, naming the store: callers (the commit,
    the scheduler, ``mailflow gc``) handle an OSError of a blob store already."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise S3Error(f"{store}: {exc}") from exc


class S3BlobStore(KnownContents):
    """Bodies as objects ``<prefix><first two hex digits>/<sha256>``, the most recent
    ones (written or read) kept in memory, bounded in bytes."""

    def __init__(self, url: str, cache_bytes: int = DEFAULT_BUDGET.recent_contents,
                 client: Any = None) -> None:
        super().__init__(cache_bytes)
        self.location = parse_blob_url(url)
        self._client = client
        self._checked: tuple[float, str | None] | None = None  # (until, problem)

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client("s3", config=Config(
                connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
                retries={"mode": "standard", "max_attempts": ATTEMPTS},
                max_pool_connections=PUT_PARALLELISM * 2))
        return self._client

    def describe(self) -> str:
        return f"s3://{self.location.bucket}/{self.location.prefix}"

    def problem(self) -> str | None:
        """The bucket answers a HEAD; the answer is kept PROBLEM_TTL seconds (a load
        balancer asking ``/readyz`` every second costs one request per period)."""
        now = time.monotonic()
        if self._checked is not None and self._checked[0] > now:
            return self._checked[1]
        problem = None
        try:
            with _s3_errors(self.describe()):
                self.client.head_bucket(Bucket=self.location.bucket)
        except S3Error as exc:
            problem = str(exc)
        self._checked = (now + PROBLEM_TTL, problem)
        return problem

    def write_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        """PUT the bodies not stored yet; returns once every PUT was acknowledged
        (blocking: run in a thread).  A failed PUT raises, so the commit that waits for
        it fails and the client gets a temporary error.

        A body this process stored is checked with a HEAD instead of PUT again (the
        commit's re-check, as the file store stats its file): another relay's garbage
        collector may have deleted it since, and then it is written anew.
        """
        new: dict[str, bytes] = {}
        for digest, data in items:
            self.remember(digest, data)
            if not (self._stored(digest) and self._exists(digest)):
                new[digest] = data
        if not new:
            return
        if len(new) == 1:
            self._put(*next(iter(new.items())))
        else:
            with ThreadPoolExecutor(min(PUT_PARALLELISM, len(new)),
                                    thread_name_prefix="s3-put") as pool:
                list(pool.map(lambda item: self._put(*item), new.items()))
        self._note_stored(new)

    def _exists(self, digest: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            with _s3_errors(self.describe()):
                self.client.head_object(Bucket=self.location.bucket,
                                        Key=self.location.key(digest))
        except S3Error as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and cause.response.get("Error", {}).get(
                    "Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def _put(self, digest: str, data: bytes) -> None:
        with _s3_errors(self.describe()):
            self.client.put_object(Bucket=self.location.bucket,
                                   Key=self.location.key(digest), Body=data,
                                   ContentType="message/rfc822")

    def read(self, digest: str) -> bytes:
        """The body; FileNotFoundError if there is no such object (as the file store)."""
        cached = self.cached(digest)
        if cached is not None:
            return cached
        try:
            with _s3_errors(self.describe()):
                answer = self.client.get_object(Bucket=self.location.bucket,
                                                Key=self.location.key(digest))
                data: bytes = answer["Body"].read()
        except S3Error as exc:
            if isinstance(exc.__cause__, self.client.exceptions.NoSuchKey):
                raise FileNotFoundError(f"{self.describe()}: no object for {digest}") from None
            raise
        self.remember(digest, data)
        return data

    def unlink_many(self, digests: Iterable[str]) -> None:
        doomed = list(digests)
        for digest in doomed:
            self._forget(digest)
        for start in range(0, len(doomed), DELETE_BATCH):
            batch = doomed[start:start + DELETE_BATCH]
            with _s3_errors(self.describe()):
                answer = self.client.delete_objects(Bucket=self.location.bucket, Delete={
                    "Objects": [{"Key": self.location.key(d)} for d in batch],
                    "Quiet": True})
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise S3Error(f"{self.describe()}: {len(errors)} object(s) not deleted, "
                              f"first {first.get('Key')}: {first.get('Code')} "
                              f"{first.get('Message')}")

    def stored_before(self, cutoff: float) -> Iterator[tuple[str, int]]:
        """(digest, size) of every object last written before ``cutoff`` (epoch s)."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=self.location.prefix)
        with _s3_errors(self.describe()):
            for page in pages:
                for item in page.get("Contents", ()):
                    digest = item["Key"].rsplit("/", 1)[-1]
                    if len(digest) == 64 and item["LastModified"].timestamp() < cutoff:
                        yield digest, int(item["Size"])

    def leftovers_before(self, cutoff: float) -> list[str]:
        """Temporary files have no counterpart in S3 (a PUT is all or nothing)."""
        return []
