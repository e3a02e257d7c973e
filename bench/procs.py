"""Peak memory of a multi-process peer (Postfix, Mailman): RSS summed over a process tree.

:class:`TreeRssSampler` follows a root process (Postfix's ``master``, Mailman's
``master``) from a thread: every ``interval`` it finds the root's descendants in
``/proc`` and sums their ``VmRSS`` (the root included), keeping the largest sum seen.
A sum of RSS counts pages shared between the processes (the interpreter, libraries,
copy-on-write pages) once per process, so it is an upper bound of the real footprint; a
process that lives shorter than one interval can be missed.
"""

from __future__ import annotations

import os
import threading
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


def tree_rss(root: int) -> tuple[int, int]:
    """(resident bytes summed over ``root`` and its descendants, number of processes)."""
    table = _parent_and_rss()
    if root not in table:
        return 0, 0
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total = count = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        total += table[pid][1]
        count += 1
        todo.extend(children.get(pid, []))
    return total, count


class TreeRssSampler:
    """The largest RSS sum of a process tree, sampled from a thread (see the module doc)."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root = root
        self.interval = interval
        self.peak_bytes = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> TreeRssSampler:
        self.sample()
        self._thread.start()
        return self

    def sample(self) -> None:
        total, count = tree_rss(self.root)
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_processes = total, count

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> float:
        """Stop sampling (one last sample first); returns the peak in MB (10^6 B)."""
        self.sample()
        self._stop.set()
        self._thread.join(5)
        return self.peak_mb

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 1e6
