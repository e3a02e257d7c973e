"""When each of ``smtp-sink -d``'s transaction files was finished, stamped as it happens.

Why not the files' modification times: on this kernel a new file gets a coarse
timestamp (the last clock tick, 4 ms at HZ=250), so an mtime can be up to a tick
*earlier* than the real write.  Measured: sink files stamped 4.5 ms before the relay had
even committed the message.  For idle latency (a few milliseconds) that error is as
large as the figure.

So a thread of the benchmark watches the dump folder with inotify and notes
``time.time()`` when the sink closes each file it wrote (``IN_CLOSE_WRITE``).  The stamp
is at or slightly after the real arrival (the thread's wake-up, typically well under
0.1 ms): conservative, like the rest of the suite.  Linux only (inotify via libc).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import threading
import time
from pathlib import Path

IN_CLOSE_WRITE = 0x00000008
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


class ArrivalWatchError(RuntimeError):
    pass


class ArrivalWatch:
    """``with ArrivalWatch(folder) as watch: ... watch.closed_at(name)``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._stamps: dict[str, float] = {}
        self._lock = threading.Lock()
        self._overflow = False
        self._stop_r, self._stop_w = os.pipe()
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise ArrivalWatchError(f"inotify_init1: {os.strerror(ctypes.get_errno())}")
        if libc.inotify_add_watch(self._fd, str(folder).encode(), IN_CLOSE_WRITE) < 0:
            os.close(self._fd)
            raise ArrivalWatchError(f"inotify_add_watch: {os.strerror(ctypes.get_errno())}")
        self._thread = threading.Thread(target=self._run, name="arrival-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            ready, _, _ = select.select([self._fd, self._stop_r], [], [])
            now = time.time()
            if self._stop_r in ready:
                return
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                continue
            offset = 0
            with self._lock:
                while offset + _EVENT.size <= len(data):
                    _, mask, _, length = _EVENT.unpack_from(data, offset)
                    name = data[offset + _EVENT.size:offset + _EVENT.size + length]
                    offset += _EVENT.size + length
                    if mask & IN_Q_OVERFLOW:
                        self._overflow = True
                    elif mask & IN_CLOSE_WRITE:
                        self._stamps.setdefault(name.rstrip(b"\0").decode(), now)

    def closed_at(self, name: str) -> float | None:
        """When the sink closed the file ``name`` (None: not seen closed yet)."""
        with self._lock:
            if self._overflow:
                raise ArrivalWatchError("inotify queue overflowed: arrival stamps were lost")
            return self._stamps.get(name)

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        for fd in (self._fd, self._stop_r, self._stop_w):
            os.close(fd)

    def __enter__(self) -> ArrivalWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
