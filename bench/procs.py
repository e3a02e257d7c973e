"""Peak memory of a multi-process peer (Postfix, Mailman): RSS summed over a process tree.

:class:`TreeRssSampler` follows a root process (Postfix's ``master``, Mailman's
``master``) from a thread: every ``interval`` (100 ms) it sums the resident size
(``/proc/PID/statm``) of the root and its descendants, keeping the largest sum seen;
the descendants are looked up in ``/proc`` once a second (a full walk costs ~6 ms, the
sum ~0.5 ms).  A sum of RSS counts pages shared between the processes (the interpreter,
libraries, copy-on-write pages) once per process, so it is an upper bound of the real
footprint; a process that lives shorter than a second can be missed.
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _parent_and_rss() -> dict[int, tuple[int, int]]:
    """{pid: (ppid, resident bytes)} of every process now."""
    table: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            resident = int((entry / "statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
        table[int(entry.name)] = (ppid, resident)
    return table


def tree(root: int) -> dict[int, int]:
    """{pid: resident bytes} of ``root`` and its descendants (empty if it is gone)."""
    table = _parent_and_rss()
    if root not in table:
        return {}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        found[pid] = table[pid][1]
        todo.extend(children.get(pid, []))
    return found


def tree_rss(root: int) -> tuple[int, int]:
    """(resident bytes summed over ``root`` and its descendants, number of processes)."""
    found = tree(root)
    return sum(found.values()), len(found)


def resident(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


class TreeRssSampler:
    """The largest RSS sum of a process tree, sampled from a thread (see the module doc)."""

    def __init__(self, root: int, interval: float = 0.1, rescan: float = 1.0) -> None:
        self.root = root
        self.interval = interval
        self.rescan = rescan
        self.peak_bytes = 0
        self.peak_processes = 0
        self._members: list[int] = []
        self._scanned_at = -math.inf
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> TreeRssSampler:
        self.sample()
        self._thread.start()
        return self

    def sample(self) -> None:
        now = time.monotonic()
        if now - self._scanned_at >= self.rescan:
            found = tree(self.root)
            self._members, self._scanned_at = list(found), now
            total = sum(found.values())
        else:
            total = sum(resident(pid) for pid in self._members)
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_processes = total, len(self._members)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> float:
        """Stop sampling (one last full sample first); returns the peak in MB (10^6 B)."""
        self._scanned_at = -math.inf
        self.sample()
        self._stop.set()
        self._thread.join(5)
        return self.peak_mb

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 1e6
