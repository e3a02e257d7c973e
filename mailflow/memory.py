"""The relay's memory: large blocks given back to the system once freed.

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

LARGE_BLOCK = 1024 * 1024  # bytes; smaller blocks (every object but contents) stay on the heap
_M_MMAP_THRESHOLD = -3     # glibc's mallopt parameter number (malloc.h)


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
