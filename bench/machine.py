"""A description of the machine a benchmark ran on, for the report."""

from __future__ import annotations

import os
import platform
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _filesystem(path: Path) -> str:
    """The file system type of ``path`` (fsync costs differ: ext4 vs tmpfs)."""
    try:
        target = path.resolve()
        best, kind = "", "unknown"
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and (str(target) + "/").startswith(parts[1].rstrip("/") + "/") \
                    and len(parts[1]) >= len(best):
                best, kind = parts[1], parts[2]
        return kind
    except OSError:
        return "unknown"


def _postfix_version() -> str | None:
    if shutil.which("dpkg-query") is None:
        return None
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "postfix"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def describe(data_root: Path) -> dict[str, object]:
    """CPU, cores, RAM, OS, Python and SQLite versions, and the store's file system."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 0
    ram = _ram_gib()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "usable_cores": usable,
        "ram_gib": round(ram, 1) if ram is not None else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "data_fs": _filesystem(data_root),
        "postfix": _postfix_version(),
        "executable": sys.executable,
    }


def summary(machine: dict[str, object]) -> str:
    ram = machine.get("ram_gib")
    cores = machine.get("cores")
    usable = machine.get("usable_cores")
    core_text = f"{cores} cores" + (f" ({usable} usable)" if usable and usable != cores else "")
    return (f"{machine.get('cpu')}, {core_text}, "
            f"{ram if ram is not None else '?'} GiB RAM, {machine.get('os')}, "
            f"Python {machine.get('python')}, SQLite {machine.get('sqlite')}, "
            f"store on {machine.get('data_fs')}")
