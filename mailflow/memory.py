"""The relay's memory: one setting shared among the caches, and large blocks given back.

``cache_memory`` bounds what the caches of message contents hold together.  Each cache
gets a share of it (:class:`CacheBudget`), and keeps no item larger than a quarter of its
own share (:func:`item_limit`): a cache of four 25 MB messages would be a memory bound
in name only, and a large message is read or rendered again for its next transaction
instead (sending it is streamed, :mod:`mailflow.egress.smtp_client`).

Why the allocator is told anything (:func:`release_large_blocks`): glibc's malloc serves a
large block from ``mmap`` and unmaps it when freed, but after the first such free it
raises that threshold to the freed block's size (up to 32 MiB), so from then on every
message-sized block comes from the heap, whose freed space it keeps.  Twenty different
20 MB messages then left the relay at several hundred MB at idle.  Setting the threshold
once turns that adjustment off: a block of ``LARGE_BLOCK`` or more is always mapped and
returned to the system when Python frees it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from dataclasses import dataclass

DEFAULT_CACHE_MEMORY = 32 * 1024 * 1024  # bytes (``cache_memory``)
LARGE_BLOCK = 1024 * 1024  # bytes; smaller blocks (every object but contents) stay on the heap
_M_MMAP_THRESHOLD = -3     # glibc's mallopt parameter number (malloc.h)


@dataclass(frozen=True, slots=True)
class CacheBudget:
    """The byte bound of every cache of contents, as shares of ``cache_memory``.

    With one SMTP egress (a provider in the relay for lone sends and one in its child)
    the caches' shares add up to 13/16 of the total, 15/16 with the references the relay
    keeps to the contents its child holds (mostly the rendered copies themselves).
    """

    total: int

    @property
    def recent_contents(self) -> int:
        """Bodies just stored (the blob store), spared a file read at their first send."""
        return self.total // 8

    @property
    def rendered_copies(self) -> int:
        """Copies made by the send chain (the scheduler), reused by each transaction."""
        return self.total // 4

    @property
    def child_contents(self) -> int:
        """Rendered copies the child process keeps between transactions."""
        return self.total // 8

    @property
    def payloads(self) -> int:
        """Dot-stuffed payloads with their copies, per SMTP or LMTP provider."""
        return self.total // 8

    @property
    def large_in_flight(self) -> int:
        """Contents above the rendered copies' item limit, rendered and sent at once (not
        a cache: what the senders hold; one such content at least)."""
        return self.total // 4

    @property
    def recent_messages(self) -> int:
        """Message rows (envelopes) handed from the committer to the scheduler."""
        return self.total // 16


DEFAULT_BUDGET = CacheBudget(DEFAULT_CACHE_MEMORY)


def item_limit(bound: int) -> int:
    """The largest item a cache bounded to ``bound`` bytes keeps."""
    return bound // 4


def release_large_blocks(threshold: int = LARGE_BLOCK) -> bool:
    """Have glibc map (and unmap when freed) every block of ``threshold`` bytes or more.

    Returns whether it applies (Linux with glibc; elsewhere nothing changes).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False
