"""The SMTP sink the relay delivers to: Postfix's ``smtp-sink``, or a Python fallback.

``smtp-sink`` (Debian package ``postfix``) is a small C server that accepts every
command and throws the mail away; with ``-c`` it prints running counters
(``sess=N quit=N mesg=N``), which give the number of mail transactions that reached
it.  The fallback is :class:`mailflow.testing.sink.SmtpSink` (aiosmtpd in a thread of
this process): slower, but it also counts recipients.

With ``dump=True`` (``python -m bench.peers``) ``smtp-sink -d`` also writes each mail
transaction to its own file (envelope as ``X-Mail-Args:``/``X-Rcpt-Args:`` lines, then
the message): :class:`DumpReader` counts the recipients in them, and
:class:`bench.arrivals.ArrivalWatch` stamps when the sink closed each file (not its
modification time, which is coarse on this kernel: see that module).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from bench.arrivals import ArrivalWatch
from mailflow.testing.ports import free_port, wait_for_port

if TYPE_CHECKING:
    from mailflow.testing.sink import Received

SMTP_SINK_CANDIDATES = ("/usr/sbin/smtp-sink", "/usr/bin/smtp-sink")
_MESG = re.compile(rb"mesg=(\d+)")


class SinkError(RuntimeError):
    pass


class Sink(Protocol):
    kind: str
    host: str
    port: int

    @property
    def url(self) -> str: ...

    def transactions(self) -> int: ...

    def recipients(self) -> int | None: ...

    def stop(self) -> None: ...


def find_smtp_sink() -> str | None:
    for candidate in SMTP_SINK_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("smtp-sink")



def wait_transactions(transactions: Callable[[], int], count: int, timeout: float) -> int:
    """Poll a sink's transaction counter until it reaches ``count`` or time runs out."""
    deadline = time.monotonic() + timeout
    seen = transactions()
    while seen < count and time.monotonic() < deadline:
        time.sleep(0.01)
        seen = transactions()
    return seen

class PostfixSink:
    """``smtp-sink -c [-u nobody] 127.0.0.1:PORT BACKLOG`` in a child process."""

    kind = "smtp-sink"

    def __init__(self, binary: str, host: str = "127.0.0.1", backlog: int = 1024,
                 max_concurrency: int = 256, dump: bool = False) -> None:
        self.binary = binary
        self.host = host
        self.port = 0
        self.backlog = backlog
        self.max_concurrency = max_concurrency
        self._dir = tempfile.TemporaryDirectory(prefix="mailflow-sink-")
        self._out = Path(self._dir.name) / "counters.txt"
        self._err = Path(self._dir.name) / "stderr.txt"
        self.dump_dir: Path | None = None
        self.watch: ArrivalWatch | None = None
        if dump:  # written by smtp-sink as ``nobody`` when started as root
            Path(self._dir.name).chmod(0o755)
            self.dump_dir = Path(self._dir.name) / "dump"
            self.dump_dir.mkdir(mode=0o777)
            self.dump_dir.chmod(0o777)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [self.binary, "-c", "-m", str(self.max_concurrency)]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd += ["-u", "nobody"]  # required when started as root, refused otherwise
        if self.dump_dir is not None:  # one file per transaction, a random suffix each
            cmd += ["-d", f"{self.dump_dir}/%H%M%S."]
        return [*cmd, f"{self.host}:{self.port}", str(self.backlog)]

    def start(self, timeout: float = 10.0) -> PostfixSink:
        self.port = free_port(self.host)
        if self.dump_dir is not None:
            self.watch = ArrivalWatch(self.dump_dir)
        with self._out.open("wb") as out, self._err.open("wb") as err:
            self.process = subprocess.Popen(self.command(), stdout=out, stderr=err,
                                            stdin=subprocess.DEVNULL)
        if not wait_for_port(self.host, self.port, timeout) or self.process.poll() is not None:
            detail = self._err.read_text(errors="replace").strip()
            self.stop()
            raise SinkError(f"smtp-sink did not start on {self.host}:{self.port}: {detail}")
        return self

    def transactions(self) -> int:
        """Mail transactions completed (the last ``mesg=`` counter printed)."""
        try:
            found = _MESG.findall(self._out.read_bytes())
        except OSError:
            return 0
        return int(found[-1]) if found else 0

    def recipients(self) -> int | None:
        return None  # smtp-sink's counters do not include recipients

    def wait_transactions(self, count: int, timeout: float = 5.0) -> int:
        """The counters are written when a transaction ends: wait briefly for the last."""
        return wait_transactions(self.transactions, count, timeout)

    def reader(self, since_now: bool = False) -> DumpReader:
        """The reader of this sink's transaction files (needs ``dump=True``).

        ``since_now``: one that sees only the transactions from now on, for a sink that
        serves several runs (call it while the sink is idle: every earlier transaction
        finished, as a finished run leaves it).
        """
        if self.dump_dir is None:
            raise SinkError("this smtp-sink was started without dump files")
        assert self.watch is not None
        if not since_now:
            return DumpReader(self.dump_dir, self.transactions, self.watch.closed_at)
        base = self.transactions()
        return DumpReader(self.dump_dir, lambda: self.transactions() - base,
                          self.watch.closed_at, skip=frozenset(os.listdir(self.dump_dir)))

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(5)
            self.process = None
        if self.watch is not None:
            self.watch.close()
            self.watch = None
        self._dir.cleanup()


@dataclass
class _Dumped:
    size: int
    recipients: int
    mtime_ns: int


@dataclass
class DumpReader:
    """Counts what reached a dumping ``smtp-sink``, and when (file modification times).

    :meth:`scan` reads only files that are new or grew since the last scan, so polling
    stays cheap; a transaction is finished when the sink's ``mesg=`` counter covers
    it, so :meth:`complete` asks for as many finished transactions as files.
    """

    folder: Path
    finished: Callable[[], int]
    closed_at: Callable[[str], float | None]
    skip: frozenset[str] = frozenset()  # files of earlier runs on the same sink
    _files: dict[str, _Dumped] = field(default_factory=dict)

    def scan(self) -> int:
        """Rescan the folder; returns the recipients seen so far."""
        with os.scandir(self.folder) as entries:
            for entry in entries:
                if entry.name in self.skip:
                    continue
                info = entry.stat()
                known = self._files.get(entry.name)
                if known is not None and known.size == info.st_size \
                        and known.mtime_ns == info.st_mtime_ns:
                    continue
                try:
                    text = Path(entry.path).read_bytes()
                except OSError:
                    continue
                self._files[entry.name] = _Dumped(info.st_size, text.count(b"\nX-Rcpt-Args:"),
                                                  info.st_mtime_ns)
        return self.recipients

    @property
    def recipients(self) -> int:
        return sum(f.recipients for f in self._files.values())

    @property
    def transactions(self) -> int:
        return len(self._files)

    def complete(self, recipients: int) -> bool:
        """``recipients`` seen and every transaction file finished (counted by the sink,
        and closed by it)."""
        return (self.scan() >= recipients and self.finished() >= self.transactions
                and all(self.closed_at(name) is not None for name in self._files))

    def last_arrival(self, names: set[str] | None = None) -> float | None:
        """When the sink closed the last of all files, or of ``names``; rescans first."""
        self.scan()
        times = [self.closed_at(name) for name in self._files if names is None or name in names]
        if not times or None in times:
            return None
        return max(t for t in times if t is not None)

    def names(self) -> set[str]:
        return set(self._files)


class PythonSink:
    """:class:`mailflow.testing.sink.SmtpSink`, counting transactions and recipients."""

    kind = "python"

    def __init__(self, host: str = "127.0.0.1") -> None:
        from mailflow.testing.sink import SmtpSink

        self._sink = SmtpSink(host)
        self.host = host
        self.port = 0

    @property
    def url(self) -> str:
        return self._sink.url

    def start(self) -> PythonSink:
        self._sink.start()
        self.port = self._sink.port
        return self

    def transactions(self) -> int:
        with self._sink.handler.lock:
            return len(self._sink.handler.messages)

    def recipients(self) -> int | None:
        with self._sink.handler.lock:
            return sum(len(m.rcpt_tos) for m in self._sink.handler.messages)

    def wait_transactions(self, count: int, timeout: float = 5.0) -> int:
        return wait_transactions(self.transactions, count, timeout)

    def copies(self) -> list[Received]:
        """What the sink received (envelope and content), in order."""
        return self._sink.messages

    def stop(self) -> None:
        self._sink.stop()


def resolve_kind(requested: str) -> tuple[str, str | None]:
    """(kind to use, smtp-sink path): ``auto`` falls back to Python with a warning."""
    binary = find_smtp_sink()
    if requested == "python":
        return "python", None
    if binary is not None:
        return "smtp-sink", binary
    if requested == "smtp-sink":
        raise SinkError("smtp-sink not found (install Debian's postfix package, or use "
                        "--sink python)")
    warnings.warn("Postfix smtp-sink not found (apt-get install postfix); using the slower "
                  "Python sink, so the figures are a lower bound", stacklevel=2)
    return "python", None


def start_sink(kind: str, binary: str | None, dump: bool = False) -> PostfixSink | PythonSink:
    if kind == "smtp-sink":
        assert binary is not None
        return PostfixSink(binary, dump=dump).start()
    if dump:
        raise SinkError("transaction files need Postfix's smtp-sink (apt-get install postfix)")
    return PythonSink().start()
