"""Content-addressed blob store: each distinct message body is one file, named by SHA-256.

Files are written to a temporary name, fsynced, renamed into place and their directory
fsynced, so a blob that the database refers to survives a crash or power loss.  A post to
a 10,000-member list is stored once; deliveries refer to it by hash.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    """Blob files, plus the most recently written contents kept in memory.

    A fresh post is usually sent within milliseconds of being stored; the in-memory copy
    (bounded by ``cache_bytes``) spares that first send a thread hop and a file read.
    """

    def __init__(self, root: Path, cache_bytes: int = 64 * 1024 * 1024) -> None:
        self.root = root
        self.cache_bytes = cache_bytes
        self._recent: OrderedDict[str, bytes] = OrderedDict()
        self._recent_size = 0
        self._lock = threading.Lock()

    def cached(self, digest: str) -> bytes | None:
        with self._lock:
            return self._recent.get(digest)

    def _remember(self, digest: str, data: bytes) -> None:
        if len(data) > self.cache_bytes // 8:
            return
        with self._lock:
            if digest in self._recent:
                return
            self._recent[digest] = data
            self._recent_size += len(data)
            while self._recent_size > self.cache_bytes:
                _, old = self._recent.popitem(last=False)
                self._recent_size -= len(old)

    def path(self, digest: str) -> Path:
        # One level of 256 folders: enough to keep folders small, few enough that
        # creating (and fsyncing) a new folder is rare.
        return self.root / digest[:2] / digest

    def write_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        """Durably write blobs that are not on disk yet (blocking: run in a thread)."""
        dirs: set[Path] = set()
        for digest, data in items:
            self._remember(digest, data)
            target = self.path(digest)
            if target.exists():
                continue
            if not target.parent.is_dir():
                target.parent.mkdir(parents=True, exist_ok=True)
                # A new fan-out folder must survive a crash too.
                dirs.add(target.parent.parent)
            tmp = target.with_name(f".{digest}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
            dirs.add(target.parent)
        for directory in dirs:
            _fsync_dir(directory)

    def read(self, digest: str) -> bytes:
        return self.cached(digest) or self.path(digest).read_bytes()

    def unlink_many(self, digests: Iterable[str]) -> None:
        for digest in digests:
            with self._lock:
                data = self._recent.pop(digest, None)
                self._recent_size -= len(data) if data is not None else 0
            self.path(digest).unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
