"""The test harness itself (mailflow.testing): ports without a race, servers that are ready
when they say so, a relay that moves to other ports when one was taken, and commands
forked with mailflow imported that behave as the executable does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mailflow.testing.forks import run_mailflow, start_mailflow
from mailflow.testing.ports import address_in_use, free_port, listening_ports, listening_socket
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink

needs_proc = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")


def test_a_reserved_port_is_not_handed_out_again_but_a_server_can_bind_it() -> None:
    reserved = free_port()
    for _ in range(200):  # what any other "find a free port" does meanwhile
        with socket.socket() as other:
            other.bind(("127.0.0.1", 0))
            assert other.getsockname()[1] != reserved
    with listening_socket("127.0.0.1", reserved) as server:  # SO_REUSEADDR, as servers do
        assert server.getsockname()[1] == reserved


@needs_proc
def test_listening_ports_are_the_processes_own() -> None:
    with listening_socket() as server:
        port = server.getsockname()[1]
        assert port in (listening_ports(os.getpid()) or set())
        assert port not in (listening_ports(1) or set())
    assert port not in (listening_ports(os.getpid()) or set())


def test_the_sink_serves_the_socket_it_bound() -> None:
    with SmtpSink() as sink:
        assert sink.port != 0
        with socket.create_connection(("127.0.0.1", sink.port), timeout=5) as client:
            assert client.recv(512).startswith(b"220 sink.test")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", sink.port), timeout=5).close()


def test_address_in_use_is_recognised() -> None:
    assert address_in_use("cannot listen for smtp on 127.0.0.1:2525: Address already in use")
    assert not address_in_use("relay started")


@needs_proc
def test_a_relay_whose_port_was_taken_starts_on_other_ports(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "relay", settings={"MAILFLOW_EGRESS": "stdout"})
    taken = relay._port["SMTP"]  # not through smtp_port: reading it pins the ports
    assert taken is not None
    with listening_socket("127.0.0.1", taken):  # someone else got there first
        relay.init()
        try:
            relay.start()
            assert address_in_use(relay.log())  # the first try failed on it
            assert relay.smtp_port != taken
            assert {relay.smtp_port, relay.http_port} <= (
                listening_ports(relay.process.pid, tree=True) or set())  # type: ignore[union-attr]
        finally:
            relay.stop()


@needs_proc
def test_a_relay_whose_ports_were_handed_out_reports_the_taken_port(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "relay", settings={"MAILFLOW_EGRESS": "stdout"})
    with listening_socket("127.0.0.1", relay.smtp_port):  # read, and then taken
        relay.init()
        with pytest.raises(RuntimeError, match="relay did not start"):
            relay.start()
    assert relay.process is None


def test_a_forked_command_is_what_the_executable_does(tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MAILFLOW_")},
           "MAILFLOW_DATA_DIR": str(tmp_path / "none")}
    for args, data in ((["list", "bogus"], None),  # usage: stderr, exit 2, "python -m"
                       (["list", "ls"], None),  # the environment: no store there
                       (["pipe", "--to", "x@example.test"], b"Subject: x\n\nhi\n")):
        forked = run_mailflow(args, env, input=data)
        real = subprocess.run([sys.executable, "-m", "mailflow", *args], env=env,
                              input=data or b"", capture_output=True, timeout=60)
        assert (forked.returncode, forked.stdout, forked.stderr) == (
            real.returncode, real.stdout, real.stderr)
        assert forked.returncode != 0 and forked.stderr
    shown = run_mailflow(["--version"], env, text=True)
    assert (shown.returncode, shown.stdout.startswith("mailflow, version "), shown.stderr) == (
        0, True, "")


def test_a_forked_command_that_runs_too_long_is_killed(tmp_path: Path) -> None:
    env = {**os.environ, "MAILFLOW_DATA_DIR": str(tmp_path), "MAILFLOW_INGRESS_PSK": "k"}
    with listening_socket() as silent:  # accepts the connection, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(subprocess.TimeoutExpired):
            run_mailflow(["pipe", "--to", "x@example.test", "--url", url], env,
                         input=b"Subject: x\n\nhi\n", timeout=2)
        silent.settimeout(10)
        connection, _ = silent.accept()
        with connection:
            connection.settimeout(10)
            while connection.recv(4096):  # the request, then EOF: the command is gone
                pass


def test_a_forked_process_gets_signals_and_reports_its_status(tmp_path: Path) -> None:
    env = {**os.environ, "MAILFLOW_DATA_DIR": str(tmp_path), "MAILFLOW_INGRESS_PSK": "k"}
    with listening_socket() as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        stdin = tmp_path / "message"
        stdin.write_bytes(b"Subject: x\n\nhi\n")
        log = str(tmp_path / "out")
        process = start_mailflow(["pipe", "--to", "x@example.test", "--url", url], env,
                                 [(str(stdin), "r"), (log, "a"), (log, "a")])
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(0.5)
        assert process.poll() is None
        process.send_signal(signal.SIGKILL)
        assert process.wait(10) == -signal.SIGKILL
        process.kill()  # ended: no signal to whoever has the pid now
