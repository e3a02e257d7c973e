"""``python -m mailflow ARGS`` in a process of its own, forked from one that has the
command imported already.

Starting Python and importing the command (SQLAlchemy, pydantic, FastAPI, uvicorn,
the store) costs more CPU than most commands then spend, and the suite runs hundreds
of commands and relays.  So :func:`start_mailflow` has each forked by a helper process
(one per test process, started on first use, ending with it) that imported
:mod:`mailflow.cli` and :mod:`mailflow.app` once.  The command still runs as the user
runs it: a process of its own, with its own environment, working directory, standard
streams and exit status; signals reach it and it starts its own child processes;
``__main__`` is ``mailflow/__main__.py`` as under ``python -m``.

What a fresh interpreter takes from the environment only at start-up (``PYTHON*``
variables, the locale) is the test process's.  The benchmarks and the tests that
exercise start-up itself run the real executable (``subprocess``), e.g. ``serve
--init`` in tests/test_cli.py and Postfix's pipe(8) in tests/test_postfix.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, overload

# (path, mode) for stdin, stdout and stderr: mode "r", "w" (truncate) or "a" (append);
# stderr with stdout's path shares stdout's file, as ``stderr=subprocess.STDOUT``.
Streams = Sequence[tuple[str, str]]
_FLAGS = {"r": os.O_RDONLY, "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
          "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND}


def _become(argv: list[str], env: dict[str, str], cwd: str, streams: Streams) -> None:
    """In the forked process: become ``python -m mailflow ARGV``, run it, exit."""
    import runpy
    import traceback

    os.environ.clear()
    os.environ.update(env)
    time.tzset()
    os.chdir(cwd)
    encoding, errors = sys.stdout.encoding, sys.stdout.errors
    for fd, (path, mode) in enumerate(streams):  # over the helper's pipes and stderr
        if fd == 2 and path == streams[1][0]:
            os.dup2(1, 2)
            continue
        opened = os.open(path, _FLAGS[mode], 0o666)
        os.dup2(opened, fd)
        os.close(opened)
    # As a fresh interpreter opens them; stderr is line-buffered and never fails.
    sys.stdin = open(0, encoding=encoding, errors=errors, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", encoding=encoding, errors=errors, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, encoding=encoding,  # noqa: SIM115
                      errors="backslashreplace", closefd=False)
    sys.argv = ["mailflow", *argv]  # run_module puts __main__.py's path first, as -m does
    code = 0
    try:
        runpy.run_module("mailflow", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            code = code or 120  # as Python does when it cannot flush at exit
    os._exit(code)


def _serve() -> None:
    """The helper.  Requests are JSON lines on stdin; it answers ``{"id", "pid"}`` once
    it has forked, and ``{"exit": pid, "code"}`` (as ``Popen.returncode``) once a
    process has ended.  It ends when the test process closes stdin."""
    import mailflow.app
    import mailflow.cli  # noqa: F401  what every command and relay would import again

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    pending = b""

    def reply(answer: dict[str, Any]) -> None:
        os.write(1, json.dumps(answer).encode() + b"\n")

    while True:
        ready = select.select([0, wake_r], [], [])[0]
        if wake_r in ready:
            while True:
                try:
                    if not os.read(wake_r, 4096):
                        break
                except BlockingIOError:
                    break
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            reply({"exit": pid, "code": os.waitstatus_to_exitcode(status)})
        if 0 not in ready:
            continue
        chunk = os.read(0, 1 << 20)
        if not chunk:
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                try:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    os.close(wake_r)
                    os.close(wake_w)
                    _become(request["argv"], request["env"], request["cwd"],
                            request["streams"])
                finally:
                    os._exit(1)
            reply({"id": request["id"], "pid": pid})


class ForkedProcess:
    """A process the helper forked: what the tests use of :class:`subprocess.Popen`."""

    def __init__(self, args: list[str], pid: int) -> None:
        self.args = args
        self.pid = pid
        self.returncode: int | None = None
        self._ended = threading.Event()

    def _exited(self, code: int) -> None:
        self.returncode = code
        self._ended.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:  # else the pid may be someone else's by now
            with contextlib.suppress(ProcessLookupError):  # ended, not reported yet
                os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _Helper:
    """The test process's end of :func:`_serve`; a thread reads its answers."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailflow.testing.forks"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._lock = threading.Lock()
        self._requests = 0
        # Request number -> (forked, its argv, where the process goes once forked).
        self._forked: dict[int, tuple[threading.Event, list[str], list[ForkedProcess]]] = {}
        self._running: dict[int, ForkedProcess] = {}
        self._reader = threading.Thread(target=self._read, name="mailflow-forks", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self._reader.is_alive()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            answer = json.loads(line)
            with self._lock:
                if "pid" in answer:  # registered before its exit can be read
                    forked, argv, slot = self._forked.pop(answer["id"])
                    slot.append(process := ForkedProcess(argv, answer["pid"]))
                    self._running[process.pid] = process
                    forked.set()
                elif answer["exit"] in self._running:
                    self._running.pop(answer["exit"])._exited(answer["code"])
        with self._lock:  # the helper is gone: nobody will report these any more
            for forked, _, _ in self._forked.values():
                forked.set()
            for process in self._running.values():
                process._exited(-signal.SIGKILL)

    def start(self, args: list[str], env: Mapping[str, str], streams: Streams
              ) -> ForkedProcess:
        assert self.process.stdin is not None
        forked, slot = threading.Event(), list[ForkedProcess]()
        argv = [sys.executable, "-m", "mailflow", *args]
        with self._lock:
            self._requests += 1
            number = self._requests
            self._forked[number] = (forked, argv, slot)
            self.process.stdin.write(json.dumps({
                "id": number, "argv": args, "env": dict(env), "cwd": os.getcwd(),
                "streams": [list(stream) for stream in streams]}).encode() + b"\n")
            self.process.stdin.flush()
        if not forked.wait(60) or not slot:
            raise RuntimeError(f"the mailflow fork helper did not start {argv}")
        return slot[0]


_helper: _Helper | None = None
_starting = threading.Lock()


def start_mailflow(args: Sequence[str], env: Mapping[str, str], streams: Streams
                   ) -> ForkedProcess:
    """``python -m mailflow ARGS`` with ``env`` and ``streams``, forked (see the module)."""
    global _helper
    with _starting:
        if _helper is None or not _helper.alive:
            _helper = _Helper()
        helper = _helper
    return helper.start(list(args), env, streams)


@overload
def run_mailflow(args: Sequence[str], env: Mapping[str, str], *, input: bytes | None = ...,
                 timeout: float = ..., text: Literal[True]
                 ) -> subprocess.CompletedProcess[str]: ...


@overload
def run_mailflow(args: Sequence[str], env: Mapping[str, str], *, input: bytes | None = ...,
                 timeout: float = ..., text: Literal[False] = ...
                 ) -> subprocess.CompletedProcess[bytes]: ...


def run_mailflow(args: Sequence[str], env: Mapping[str, str], *, input: bytes | None = None,
                 timeout: float = 60.0, text: bool = False
                 ) -> subprocess.CompletedProcess[str] | subprocess.CompletedProcess[bytes]:
    """What ``subprocess.run([python, "-m", "mailflow", *args], env=env, input=input,
    capture_output=True, timeout=timeout, text=text)`` returns (standard input is empty
    without ``input``); :class:`subprocess.TimeoutExpired` after killing it."""
    with tempfile.TemporaryDirectory(prefix="mailflow-command-") as folder:
        paths = [Path(folder) / name for name in ("stdin", "stdout", "stderr")]
        for path, data in zip(paths, (input or b"", b"", b""), strict=True):
            path.write_bytes(data)  # there even if the command is killed before it opens them
        process = start_mailflow(args, env, [(str(paths[0]), "r"), (str(paths[1]), "w"),
                                             (str(paths[2]), "w")])
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise subprocess.TimeoutExpired(process.args, timeout, paths[1].read_bytes(),
                                            paths[2].read_bytes()) from None
        out, err = paths[1].read_bytes(), paths[2].read_bytes()
    if not text:
        return subprocess.CompletedProcess(process.args, code, out, err)
    return subprocess.CompletedProcess(process.args, code, _text(out), _text(err))


def _text(data: bytes) -> str:
    """As ``subprocess.run(text=True)`` decodes: the locale's encoding, universal newlines."""
    import locale

    decoded = data.decode(locale.getpreferredencoding(False))
    return decoded.replace("\r\n", "\n").replace("\r", "\n")


if __name__ == "__main__":
    _serve()
