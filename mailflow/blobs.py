"""Content-addressed blob store: each distinct message body is one file, named by SHA-256.

Files are written to a temporary name, renamed into place and made durable (one syncfs
per batch) before the database may refer to them, so a blob that the database refers to
survives a crash or power loss.  A post to
a 10,000-member list is stored once; deliveries refer to it by hash.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

from mailflow.lru import BytesLRU
from mailflow.memory import DEFAULT_BUDGET, item_limit

DURABLE_REMEMBERED = 10_000  # digests known durable (older ones are hash-checked again)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Blobs(Protocol):
    """What the relay needs of a blob store: files here, objects in ``s3_blobs``.

    Blocking calls (all but ``cached`` and ``remember``) run on a thread.
    """

    def describe(self) -> str: ...
    def cached(self, digest: str) -> bytes | None: ...
    def remember(self, digest: str, data: bytes) -> None: ...
    def write_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        """Durably store the bodies not stored yet; raise if one cannot be."""
        ...
    def read(self, digest: str) -> bytes:
        """The body; FileNotFoundError when there is none."""
        ...
    def unlink_many(self, digests: Iterable[str]) -> None: ...
    def problem(self) -> str | None:
        """Why no body could be written now (for ``/readyz``), or None."""
        ...
    def stored_before(self, cutoff: float) -> Iterator[tuple[str, int]]:
        """(digest, size) of every body last written before ``cutoff``, for the sweep
        of bodies whose commit never happened."""
        ...
    def leftovers_before(self, cutoff: float) -> list[str]:
        """Remove temporary files of writes interrupted before ``cutoff``; their names."""
        ...


class KnownContents:
    """What a blob store of this process knows without asking its storage: the most
    recent contents (written or read), and the digests it stored itself.

    A fresh post is usually sent within milliseconds of being stored; the in-memory copy
    (bounded by ``cache_bytes``, none larger than a quarter of it) spares that first send
    a thread hop and a read.  Thread-safe: the blob threads write, the loop reads.
    """

    def __init__(self, cache_bytes: int) -> None:
        self.cache_bytes = cache_bytes
        self._recent: BytesLRU[str] = BytesLRU(cache_bytes, max_item=item_limit(cache_bytes))
        # Digests this process stored or checked (insertion order, DURABLE_REMEMBERED).
        self._durable: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, digest: str) -> bytes | None:
        with self._lock:
            return self._recent.get(digest)

    def remember(self, digest: str, data: bytes) -> None:
        """Keep a content in memory for its first sends (bounded by ``cache_bytes``)."""
        if len(data) > self._recent.max_item:
            return
        with self._lock:
            if digest not in self._recent:
                self._recent.put(digest, data)

    def _stored(self, digest: str) -> bool:
        with self._lock:
            return digest in self._durable

    def _note_stored(self, digests: Iterable[str]) -> None:
        with self._lock:
            for digest in digests:
                self._durable[digest] = None
            while len(self._durable) > DURABLE_REMEMBERED:
                self._durable.popitem(last=False)

    def _forget(self, digest: str) -> None:
        with self._lock:
            self._recent.pop(digest)
            self._durable.pop(digest, None)


class BlobStore(KnownContents):
    """Blob files, one per content, named by its SHA-256."""

    def __init__(self, root: Path, cache_bytes: int = DEFAULT_BUDGET.recent_contents) -> None:
        super().__init__(cache_bytes)
        self.root = root

    def path(self, digest: str) -> Path:
        # One level of 256 folders: enough to keep folders small, few enough that
        # creating (and fsyncing) a new folder is rare.
        return self.root / digest[:2] / digest

    def write_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        """Durably write the blobs that are not on disk yet (blocking: run in a thread).

        Every new file is written under a temporary name and renamed into place, then
        one ``syncfs`` (Linux) makes the contents and the names durable together: on ext4
        an fsync per file costs the same whatever the parallelism, so per-file fsync
        would make a batch wait N times as long, and a second sync for the names would
        double the wait of every ingest.  Elsewhere each file is fsynced before its
        rename and the folders after.

        The price of renaming before the sync: after a crash a file may sit under its
        final name with a torn content.  No message refers to it (the database commit
        waits for this sync), and a file this process has not made durable itself is
        checked against its hash before it is reused, so a torn one is written again.
        """
        pending: list[tuple[Path, Path]] = []
        written: list[str] = []
        dirs: set[Path] = set()
        for digest, data in items:
            self.remember(digest, data)
            target = self.path(digest)
            if target.exists() and (digest in self._durable or self._intact(target, digest)):
                # Fresh again: the sweep of bodies never committed goes by age.
                with contextlib.suppress(OSError):
                    os.utime(target)
                continue
            if not target.parent.is_dir():
                target.parent.mkdir(parents=True, exist_ok=True)
                dirs.add(target.parent.parent)  # a new fan-out folder must survive too
            tmp = target.with_name(f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if _syncfs is None:
                    os.fsync(fd)
            finally:
                os.close(fd)
            pending.append((tmp, target))
            written.append(digest)
            dirs.add(target.parent)
        if not pending:
            return
        for tmp, target in pending:
            os.replace(tmp, target)
        self._sync(dirs)
        self._note_stored(written)

    def _intact(self, target: Path, digest: str) -> bool:
        """Whether a file found on disk holds the content its name promises."""
        try:
            intact = content_hash(target.read_bytes()) == digest
        except OSError:
            return False
        if intact:
            self._note_stored([digest])
        return intact

    def _sync(self, dirs: set[Path]) -> None:
        if _syncfs is not None:
            fd = os.open(self.root, os.O_RDONLY)
            try:
                if _syncfs(fd) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"syncfs failed: {os.strerror(errno)}")
            finally:
                os.close(fd)
            return
        for directory in dirs:
            _fsync_dir(directory)

    def read(self, digest: str) -> bytes:
        return self.cached(digest) or self.path(digest).read_bytes()

    def unlink_many(self, digests: Iterable[str]) -> None:
        for digest in digests:
            self._forget(digest)
            self.path(digest).unlink(missing_ok=True)

    def describe(self) -> str:
        return str(self.root)

    def problem(self) -> str | None:
        if self.root.is_dir() and os.access(self.root, os.W_OK | os.X_OK):
            return None
        return f"{self.root} is not writable"

    def stored_before(self, cutoff: float) -> Iterator[tuple[str, int]]:
        for folder in sorted(self.root.glob("??")):
            with os.scandir(folder) as entries:
                for entry in entries:
                    if len(entry.name) != 64 or not entry.is_file():
                        continue
                    info = entry.stat()
                    if info.st_mtime < cutoff:
                        yield entry.name, info.st_size

    def leftovers_before(self, cutoff: float) -> list[str]:
        removed = []
        for tmp in self.root.glob("??/.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed.append(tmp.name)
        return removed


def _load_syncfs() -> Callable[[int], int] | None:
    """libc's syncfs(2), or None where there is none (not Linux, or no glibc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        syncfs: Callable[[int], int] = libc.syncfs
        return syncfs
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

