"""A relay in a child process, for end-to-end tests and benchmarks.

A real process, so tests can kill it with SIGKILL and start it again on the same store.
Settings reach it only through ``MAILFLOW_*`` environment variables, as in production.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from mailflow.store import Repository, create_cli_engines
from mailflow.testing.ports import free_port, wait_for_port


class RelayProcess:
    def __init__(self, data_dir: Path, *, database_url: str = "",
                 settings: Mapping[str, str] | None = None, lmtp: bool = False) -> None:
        self.data_dir = data_dir
        self.smtp_port = free_port()
        self.http_port = free_port()
        self.lmtp_port = free_port() if lmtp else None
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MAILFLOW_")}
        self.env.update({
            "MAILFLOW_DATA_DIR": str(data_dir),
            "MAILFLOW_SMTP_LISTEN": f"127.0.0.1:{self.smtp_port}",
            "MAILFLOW_HTTP_LISTEN": f"127.0.0.1:{self.http_port}",
            "MAILFLOW_LMTP_LISTEN": f"127.0.0.1:{self.lmtp_port}" if lmtp else "off",
            "MAILFLOW_HOSTNAME": "relay.test",
        })
        if database_url:
            self.env["MAILFLOW_DATABASE_URL"] = database_url
        self.env.update(settings or {})
        self.log_path = data_dir / "relay.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def database_url(self) -> str:
        return self.env.get("MAILFLOW_DATABASE_URL") or f"sqlite:///{self.data_dir}/mailflow.db"

    def cli(self, *args: str, input: bytes | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``mailflow ARGS`` against this relay's store."""
        return subprocess.run(
            [sys.executable, "-m", "mailflow", *args], env=self.env, capture_output=True,
            text=True, timeout=timeout, input=input.decode() if input else None)

    def init(self) -> None:
        result = self.cli("init")
        if result.returncode != 0:
            raise RuntimeError(f"mailflow init failed: {result.stderr}")

    @contextmanager
    def repository(self) -> Iterator[Repository]:
        engines = create_cli_engines(self.database_url)
        try:
            yield Repository(engines)
        finally:
            engines.dispose()

    def start(self, timeout: float = 30.0) -> RelayProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mailflow", "serve"], env=self.env,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if not wait_for_port("127.0.0.1", self.smtp_port, timeout) or \
                self.process.poll() is not None:
            self.stop()
            raise RuntimeError(f"relay did not start:\n{self.log()}")
        wait_for_port("127.0.0.1", self.http_port, timeout)
        return self

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

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> RelayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
