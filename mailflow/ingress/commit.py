"""Group commit: concurrent ingests share one transaction and one round of fsyncs.

Each ingest waits on a future that resolves only after its blob and message row are
committed; while one transaction runs, the next batch gathers.  Under load this turns
N fsyncs into one; at idle a lone message commits at once.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from dataclasses import dataclass

from mailflow.blobs import BlobStore
from mailflow.clock import Clock
from mailflow.errors import StorageUnavailable
from mailflow.model import InboundMessage
from mailflow.store.runner import StoreRunner

log = logging.getLogger(__name__)

MAX_BATCH_MESSAGES = 256
MAX_BATCH_BYTES = 32 * 1024 * 1024
HASH_IN_THREAD_ABOVE = 256 * 1024


@dataclass(slots=True)
class _Pending:
    message: InboundMessage
    data: bytes
    done: asyncio.Future[None]


async def content_digest(data: bytes) -> str:
    """SHA-256 of a message; large ones are hashed off the event loop."""
    if len(data) > HASH_IN_THREAD_ABOVE:
        return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
    return hashlib.sha256(data).hexdigest()


class GroupCommitter:
    def __init__(self, runner: StoreRunner, blobs: BlobStore, clock: Clock) -> None:
        self.runner = runner
        self.blobs = blobs
        self.clock = clock
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()

    async def commit(self, message: InboundMessage, data: bytes) -> None:
        """Return once the message is durable; raise StorageUnavailable otherwise."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(message, data, done))
        await done

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0].data)
            while (not self._queue.empty() and len(batch) < MAX_BATCH_MESSAGES
                   and size < MAX_BATCH_BYTES):
                item = self._queue.get_nowait()
                batch.append(item)
                size += len(item.data)
            await self._commit_batch(batch)

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        write_blobs = functools.partial(
            self.blobs.write_many, [(p.message.blob, p.data) for p in batch])
        try:
            await self.runner.write(self.runner.repo.store_messages,
                                    [p.message for p in batch], self.clock.now(), write_blobs)
        except Exception as exc:
            log.exception("could not store %d message(s)", len(batch),
                          extra={"action": "store_failed"})
            error = StorageUnavailable(f"cannot store the message right now ({type(exc).__name__})"
                                       ", try again later")
            for pending in batch:
                if not pending.done.done():
                    pending.done.set_exception(error)
            return
        for pending in batch:
            if not pending.done.done():
                pending.done.set_result(None)
