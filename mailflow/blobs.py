"""Content-addressed blob store: each distinct message body is one file, named by SHA-256.

Files are written to a temporary name, fsynced, renamed into place and their directory
fsynced, so a blob that the database refers to survives a crash or power loss.  A post to
a 10,000-member list is stored once; deliveries refer to it by hash.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest[2:4] / digest

    def write_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        """Durably write blobs that are not on disk yet (blocking: run in a thread)."""
        dirs: set[Path] = set()
        for digest, data in items:
            target = self.path(digest)
            if target.exists():
                continue
            if not target.parent.is_dir():
                target.parent.mkdir(parents=True, exist_ok=True)
                # New fan-out directories must survive a crash too.
                dirs.update((target.parent.parent, self.root))
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
        return self.path(digest).read_bytes()

    def unlink_many(self, digests: Iterable[str]) -> None:
        for digest in digests:
            self.path(digest).unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
