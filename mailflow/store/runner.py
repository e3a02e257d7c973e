"""Runs repository calls off the event loop, on threads chosen for each backend.

SQLite allows one writer at a time, so all writes go through one thread (which is also
what makes group commit natural); reads use a small pool of their own.  PostgreSQL
shares one pool of threads for both.  Nothing in the async code touches a database
connection directly.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from mailflow.errors import StorageUnavailable
from mailflow.store.engine import Engines
from mailflow.store.repository import Repository
from mailflow.verp import Verp

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class StoreRunner:
    def __init__(self, engines: Engines, pool_size: int = 4,
                 roles: Mapping[str, str] | None = None, verp: Verp | None = None) -> None:
        self.repo = Repository(engines, roles, verp)
        self.engines = engines
        if engines.is_sqlite:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="mailflow-db-write")
            self._reader = ThreadPoolExecutor(pool_size, thread_name_prefix="mailflow-db-read")
        else:
            self._writer = ThreadPoolExecutor(pool_size, thread_name_prefix="mailflow-db")
            self._reader = self._writer

    async def write(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, functools.partial(fn, *args, **kwargs))

    async def read(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, functools.partial(fn, *args, **kwargs))

    async def read_on_ingest(self, what: str, reply: str, fn: Callable[P, T],
                             *args: P.args, **kwargs: P.kwargs) -> T:
        """A read an ingest depends on: any failure is logged (``what`` failed) and
        becomes :class:`StorageUnavailable` with ``reply``, a temporary refusal (451)."""
        try:
            return await self.read(fn, *args, **kwargs)
        except Exception as exc:
            log.exception("%s failed", what, extra={"action": "lookup_failed"})
            raise StorageUnavailable(reply) from exc

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        if self._reader is not self._writer:
            self._reader.shutdown(wait=True)
        self.engines.dispose()
