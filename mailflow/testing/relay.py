"""A relay in a child process, for end-to-end tests and benchmarks.

A real process, so tests can kill it with SIGKILL and start it again on the same store.
Settings reach it only through ``MAILFLOW_*`` environment variables, as in production.
"""

from __future__ import annotations

import itertools
import os
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from mailflow.model import ListKind
from mailflow.store import Repository, create_cli_engines
from mailflow.testing.factories import make_list
from mailflow.testing.forks import ForkedProcess, run_mailflow, start_mailflow
from mailflow.testing.ports import (
    ATTEMPTS,
    address_in_use,
    descendants,
    free_port,
    listening_ports,
    wait_for_port,
)

RUNNING = b"MailFlow Relay is running"  # what ``mailflow serve`` prints once it listens
_LISTS = itertools.count()  # list addresses unique across every relay of a test run


def process_memory(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of process ``pid`` from ``/proc/PID/status`` in bytes (``VmRSS``
    resident now, ``VmHWM`` its peak); 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


# Delivery states only ``mailflow queue`` sets (see ``wait_settled``).
OPERATOR_STATES = frozenset({"held", "deleted"})

class RelayProcess:
    """``mailflow serve`` as a child process on reserved loopback ports.

    The harness picks the SMTP, HTTP and (``lmtp``, ``policy``) LMTP and policy ports.
    If one was taken by someone else before the relay bound it, :meth:`start` tries
    again on new ports, as long as nobody has read them yet (a test that wired them
    into a Postfix configuration would otherwise talk to the wrong ports).

    ``forked`` (the default): ``mailflow serve`` and :meth:`cli` commands are forked from
    a process that imported the command once (:mod:`mailflow.testing.forks`); without
    it they are started as executables, as the benchmarks need.
    """

    def __init__(self, data_dir: Path, *, database_url: str = "",
                 settings: Mapping[str, str] | None = None, lmtp: bool = False,
                 policy: bool = False, forked: bool = True, smtp: bool = True,
                 http: bool = True) -> None:
        self.data_dir = data_dir
        self.forked = forked
        # smtp/http False: no such listener (``--role worker`` has none at all).
        self._wanted = {"SMTP": smtp, "HTTP": http, "LMTP": lmtp, "POLICY": policy}
        self._port: dict[str, int | None] = {}
        self._ports_seen = False
        self._given = set(settings or {})  # a test's own MAILFLOW_*_LISTEN stays as given
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MAILFLOW_")}
        self.env.update({"MAILFLOW_DATA_DIR": str(data_dir), "MAILFLOW_HOSTNAME": "relay.test"})
        self._pick_ports()
        if database_url:
            self.env["MAILFLOW_DATABASE_URL"] = database_url
        self.env.update(settings or {})
        self.log_path = data_dir / "relay.log"
        self.process: subprocess.Popen[bytes] | ForkedProcess | None = None

    def _pick_ports(self) -> None:
        for name, wanted in self._wanted.items():
            port = free_port() if wanted else None
            self._port[name] = port
            key = f"MAILFLOW_{name}_LISTEN"
            if key not in self._given and (port is not None or name != "POLICY"):
                self.env[key] = f"127.0.0.1:{port}" if port else "off"  # policy: off by default

    def _get_port(self, name: str) -> int | None:
        if self.process is None:
            self._ports_seen = True
        return self._port[name]

    @property
    def _retry_ports(self) -> bool:
        """Whether a start may move to new ports: none read yet, none a test's own."""
        return not self._ports_seen and not any(k.endswith("_LISTEN") for k in self._given)

    @property
    def smtp_port(self) -> int:
        port = self._get_port("SMTP")
        assert port is not None
        return port

    @property
    def http_port(self) -> int:
        port = self._get_port("HTTP")
        assert port is not None
        return port

    @property
    def lmtp_port(self) -> int | None:
        return self._get_port("LMTP")

    @property
    def policy_port(self) -> int | None:
        return self._get_port("POLICY")

    def _listen_ports(self) -> set[int]:
        """Every port the relay is configured to listen on (the harness's and a test's)."""
        ports = set()
        for key, value in self.env.items():
            if key.startswith("MAILFLOW_") and key.endswith("_LISTEN") and value != "off":
                ports.add(int(value.rsplit(":", 1)[1]))
        return ports

    @property
    def database_url(self) -> str:
        return self.env.get("MAILFLOW_DATABASE_URL") or f"sqlite:///{self.data_dir}/mailflow.db"

    def cli(self, *args: str, input: bytes | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``mailflow ARGS`` against this relay's store."""
        if self.forked:
            return run_mailflow(args, self.env, input=input, timeout=timeout, text=True)
        return subprocess.run(
            [sys.executable, "-m", "mailflow", *args], env=self.env, capture_output=True,
            text=True, timeout=timeout, input=input.decode() if input else None)

    def post(self, sender: str, recipient: str, content: bytes) -> str:
        """Send one message over SMTP, each step accepted; the relay's queue id from the
        DATA reply."""
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30) as client:
            client.ehlo("client.test")
            assert client.mail(sender)[0] == 250
            assert client.rcpt(recipient)[0] == 250
            code, reply = client.data(content)
        assert code == 250, reply
        return reply.decode().rsplit(" ", 1)[-1]

    def init(self) -> None:
        """What ``mailflow init`` does (data directory, schema), in this process.

        The command itself is tested in tests/test_cli.py; a child process for it here
        would cost every relay a second interpreter start.
        """
        from mailflow.config import Settings
        from mailflow.services.installation import initialise

        initialise(Settings(data_dir=self.data_dir, hostname="relay.test",
                            database_url=self.env.get("MAILFLOW_DATABASE_URL", ""),
                            instance_id=self.env.get("MAILFLOW_INSTANCE_ID", "")))

    @contextmanager
    def repository(self) -> Iterator[Repository]:
        engines = create_cli_engines(self.database_url)
        try:
            yield Repository(engines)
        finally:
            engines.dispose()

    def fresh_list(self, members: int = 3, kind: ListKind = ListKind.LIST, name: str = ""
                   ) -> tuple[str, list[str]]:
        """A new list (or alias) with members of its own: its address and theirs.

        For tests that share a relay and a sink: each looks only at its own members'
        copies (:meth:`SmtpSink.wait_for_copies`), so none can see another's mail.
        """
        number = next(_LISTS)
        address = f"{kind.value}{number}@example.test"
        roster = [f"{person}{number}@members.test"
                  for person in ("ann", "ben", "cat", "dan")[:members]]
        with self.repository() as repo:
            make_list(repo, address, roster, kind=kind, name=name)
        return address, roster

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(messages, deliveries) per status, read from the store as the CLI does."""
        with self.repository() as repo:
            return repo.message_counts(), repo.delivery_counts()

    def wait_settled(self, timeout: float = 30.0) -> dict[str, int]:
        """Wait until the relay has nothing left to send; returns the delivery counts.

        Settled: every accepted message expanded, every delivery final (delivered or
        failed).  From then on no further copy can leave the relay, which is how a test
        proves that something did *not* happen without sleeping.  The operators' states
        (``held``, ``deleted``: ``mailflow queue``) are in the counts only when some
        delivery is in one.
        """
        deadline = time.monotonic() + timeout
        while True:
            messages, deliveries = self.counts()
            if messages.get("received", 0) == 0 and not any(
                    deliveries.get(status, 0) for status in ("queued", "in_flight", "deferred")):
                return {status: n for status, n in deliveries.items()
                        if n or status not in OPERATOR_STATES}
            if time.monotonic() >= deadline:
                raise AssertionError(f"relay not settled within {timeout}s: messages "
                                     f"{messages}, deliveries {deliveries}\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def start(self, timeout: float = 30.0) -> RelayProcess:
        """Start ``mailflow serve``; return once the relay itself listens on every port.

        A port someone else took since it was picked (EADDRINUSE in the log) means new
        ports and another try, unless they were read before (see the class).
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(ATTEMPTS):
            logged = self.log_path.stat().st_size if self.log_path.exists() else 0
            if self.forked:
                log = str(self.log_path)
                self.process = start_mailflow(["serve"], self.env, [
                    (os.devnull, "r"), (log, "a"), (log, "a")])
            else:
                with self.log_path.open("ab") as log_file:
                    self.process = subprocess.Popen(
                        [sys.executable, "-m", "mailflow", "serve"], env=self.env,
                        stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            if self._wait_listening(self.process, timeout, logged):
                return self
            self.stop()
            output = self.log_path.read_bytes()[logged:].decode(errors="replace")
            if not address_in_use(output) or not self._retry_ports or attempt == ATTEMPTS - 1:
                raise RuntimeError(f"relay did not start:\n{output}")
            self._pick_ports()
        raise AssertionError("unreachable")

    def _wait_listening(self, process: subprocess.Popen[bytes] | ForkedProcess, timeout: float,
                        logged: int) -> bool:
        """True once ``process`` listens on all its ports; False if it exits or times out.

        Until the relay says it is running (its log from byte ``logged`` on), only the
        log is read: a look at /proc scans every process and socket of the machine.
        """
        wanted = self._listen_ports()
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            if not self._says_running(logged):
                time.sleep(0.01)
                continue
            # The relay or its child process: wherever the listeners are bound.
            listening = listening_ports(process.pid, tree=True)
            if listening is None:  # no /proc: a connection must do
                return all(wait_for_port("127.0.0.1", port, deadline - time.monotonic())
                           for port in wanted) and process.poll() is None
            if wanted <= listening:
                return True
            time.sleep(0.02)
        return False

    def _says_running(self, logged: int) -> bool:
        """Whether ``mailflow serve`` has printed that it runs (every listener bound)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(logged)
                return RUNNING in log.read()
        except FileNotFoundError:  # not opened yet by a forked relay
            return False

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited in time; returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        code, self.process = self.process.returncode, None
        return code

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as in a crash or power loss of the process."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(20)
            self.process = None

    def processes(self) -> list[int]:
        """The relay's pid and its descendants' (its child process): empty if stopped."""
        if self.process is None:
            return []
        return [self.process.pid, *descendants(self.process.pid)]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> RelayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
