"""Bounds on SMTP/LMTP sessions (issue 10 item 7): connections in total and per client,
the open files limit, idle and DATA timeouts, commands and refused recipients per session.

The end-to-end tests set the limits tiny (timeouts under a second, limits of 2 and 3)
and speak raw bytes, so a pipelined write is really one write.  The sessions are the
child's business, not the store's: these relays run on SQLite only.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import select
import smtplib
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import pytest

from mailflow.config import ListenAddress
from mailflow.ingress import limits
from mailflow.ingress.limits import ConnectionLimiter, SessionLimits, client_key
from mailflow.ingress.smtp import Acceptor, start_listener
from mailflow.testing.factories import make_message
from mailflow.testing.ports import descendants
from mailflow.testing.raw_smtp import RawClient, connect, talk
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink

# -- the rules, without a process ----------------------------------------------------------


@pytest.mark.parametrize(("peer", "key"), [
    (("192.0.2.7", 40000), "192.0.2.7"),
    (("2001:db8:1:2::7", 40000, 0, 0), "2001:db8:1:2::/64"),
    (("2001:db8:1:2:ffff:ffff:ffff:ffff", 1, 0, 0), "2001:db8:1:2::/64"),
    (("2001:db8:1:3::7", 40000, 0, 0), "2001:db8:1:3::/64"),
    (("::ffff:192.0.2.7", 40000, 0, 0), "192.0.2.7"),
    (("fe80::1%eth0", 40000, 0, 2), "fe80::/64"),
    (None, "None"),
])
def test_clients_are_counted_by_address_ipv6_by_its_64(peer: object, key: str) -> None:
    assert client_key(peer) == key


def test_the_connection_limiter_counts_in_total_and_per_client() -> None:
    limiter = ConnectionLimiter(SessionLimits(max_connections=3, max_connections_per_client=2))
    assert limiter.admit("192.0.2.1") is None
    assert limiter.admit("192.0.2.1") is None
    assert limiter.admit("192.0.2.1") == "too many connections from your address, try again later"
    assert limiter.admit("2001:db8::/64") is None
    assert limiter.admit("192.0.2.9") == "too many connections, try again later"
    limiter.release("192.0.2.1")
    assert limiter.admit("192.0.2.9") is None  # a freed place is anyone's
    assert limiter.admit("192.0.2.1") == "too many connections, try again later"
    for client in ("192.0.2.1", "2001:db8::/64", "192.0.2.9"):
        limiter.release(client)
    assert limiter.total == 0
    assert limiter.admit("192.0.2.1") is None and limiter.admit("192.0.2.1") is None


def test_refused_connections_are_logged_once_a_minute_not_one_by_one(
        caplog: pytest.LogCaptureFixture) -> None:
    limiter = ConnectionLimiter(SessionLimits(max_connections=1))
    assert limiter.admit("192.0.2.1") is None
    with caplog.at_level(logging.WARNING, logger="mailflow.ingress.limits"):
        for _ in range(1000):
            assert limiter.admit("192.0.2.2") is not None
    [record] = caplog.records
    assert record.getMessage().startswith("refused 1 connection(s) (the latest from 192.0.2.2")


async def test_a_client_that_stops_reading_is_dropped_after_the_grace(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Replies pile up unread until the relay's writes block; then the idle timeout's
    421 cannot be sent either, and closing would wait for a reader that never comes."""
    monkeypatch.setattr(limits, "HANG_UP_GRACE", 0.2)
    listener = await start_listener(
        cast(Acceptor, object()), ListenAddress("127.0.0.1", 0), hostname="relay.test",
        max_message_size=1024, limits=SessionLimits(idle_timeout=0.3, max_commands=10**6))
    # Small buffers (accepted sockets inherit the listening one's): the writes block soon.
    listener.server.sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    loop = asyncio.get_running_loop()
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    flood: asyncio.Task[None] | None = None
    try:
        await loop.sock_connect(client, listener.server.sockets[0].getsockname())
        flood = asyncio.create_task(loop.sock_sendall(client, b"HELP\r\n" * 100_000))
        deadline = time.monotonic() + 10
        while not any(session.transport is not None for session in listener.sessions):
            assert time.monotonic() < deadline, "no session"
            await asyncio.sleep(0.01)
        [session] = listener.sessions
        while session.transport is not None:
            assert time.monotonic() < deadline, "the session is still open"
            await asyncio.sleep(0.05)
    finally:
        if flood is not None:
            flood.cancel()
            await asyncio.gather(flood, return_exceptions=True)
        client.close()
        await listener.close(grace=0)


# -- over real sockets ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_databases() -> Iterator[Callable[[], str]]:
    yield lambda: "sqlite:"


@contextmanager
def soft_open_files_limit(limit: int) -> Iterator[None]:
    """Processes started meanwhile inherit a soft open files limit of ``limit``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def limited(make_module_relay: Callable[..., RelayProcess]) -> RelayProcess:
    """Limits of 2 and 3 (commands: 30), timeouts long enough for any test to talk."""
    relay = make_module_relay(
        smtp_max_connections="10", smtp_max_connections_per_client="2",
        smtp_max_commands="30", smtp_max_failed_recipients="3")
    with soft_open_files_limit(512):
        return relay.start()


@pytest.fixture(scope="module")
def hasty(make_module_relay: Callable[..., RelayProcess]) -> RelayProcess:
    """Idle and DATA timeouts under a second."""
    return make_module_relay(smtp_idle_timeout="0.8", smtp_data_timeout="0.8").start()


def _open_files(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open files limit in /proc")


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="needs Linux /proc")
def test_the_relay_and_its_child_raise_their_open_files_limit(limited: RelayProcess) -> None:
    """Started with a soft limit of 512, both run with the hard limit."""
    assert limited.process is not None
    pids = [limited.process.pid, *descendants(limited.process.pid)]
    assert len(pids) == 2  # the relay and its child, which holds the sessions
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard <= 512:
        pytest.skip(f"the hard limit here is {hard}: nothing to raise")
    assert [_open_files(pid) for pid in pids] == [(hard, hard)] * 2


def _admitted(port: int, deadline: float) -> RawClient:
    """A session past the greeting; a refusal is retried until ``deadline`` (a session
    another test just ended may still be counted for a moment)."""
    while True:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        client = RawClient(sock)
        greeting = client.reply()
        if greeting.startswith("220 "):
            return client
        sock.close()
        assert greeting.startswith("421 4.7.0") and time.monotonic() < deadline, greeting
        time.sleep(0.05)


def test_connections_beyond_the_limit_per_client_get_421_and_are_closed(
        limited: RelayProcess) -> None:
    deadline = time.monotonic() + 10
    first, second = _admitted(limited.smtp_port, deadline), _admitted(limited.smtp_port,
                                                                      deadline)
    try:
        with connect(limited.smtp_port) as third:
            assert third.reply() == (
                "421 4.7.0 relay.test too many connections from your address, try again later")
            assert third.closed()
        assert first.send(b"EHLO client.test").startswith("250")  # the others go on
        assert first.send(b"QUIT").startswith("221 2.0.0")
        assert first.closed()
        _admitted(limited.smtp_port, time.monotonic() + 10).sock.close()  # the freed place
    finally:
        first.sock.close()
        second.sock.close()


def test_a_session_ends_after_the_refused_recipients_limit(limited: RelayProcess,
                                                           module_sink: SmtpSink) -> None:
    """MAIL, a good RCPT, three unknown ones, DATA and a message in one write: the third
    refusal ends the session, and the DATA already sent is not acted upon."""
    address, members = limited.fresh_list(members=1)
    with talk(limited.smtp_port) as client:
        client.write(
            b"MAIL FROM:<poster@outside.test>\r\n" + f"RCPT TO:<{address}>\r\n".encode()
            + b"".join(f"RCPT TO:<nobody{i}@example.test>\r\n".encode() for i in range(3))
            + b"DATA\r\n" + make_message(address, subject="pipelined") + b".\r\n")
        assert client.reply().startswith("250 2.1.0")
        assert client.reply().startswith("250 2.1.5")
        for _ in range(3):
            assert client.reply().startswith("550 5.1.1")
        assert client.reply() == ("421 4.7.0 relay.test too many refused recipients (3), "
                                  "closing connection")
        assert client.closed()
    # A message sent afterwards arrives; had the first been stored, it would be there too.
    with smtplib.SMTP("127.0.0.1", limited.smtp_port, timeout=30) as later:
        later.sendmail("poster@outside.test", [address],
                       make_message(address, subject="afterwards"))
    assert len(module_sink.wait_for_copies(members)) == 1
    limited.wait_settled()
    [copy] = module_sink.wait_for_copies(members, timeout=0)
    assert b"Subject: afterwards" in copy.content


def test_a_session_ends_after_the_commands_limit(limited: RelayProcess) -> None:
    with talk(limited.smtp_port) as client:  # EHLO is the first of the 30
        client.write(b"NOOP\r\n" * 30)
        replies = [client.reply() for _ in range(30)]
        assert replies[:29] == ["250 2.0.0 OK"] * 29
        assert replies[29] == "421 4.7.0 relay.test too many commands (30), closing connection"
        assert client.closed()


def test_a_client_silent_for_the_idle_timeout_gets_421(hasty: RelayProcess) -> None:
    with talk(hasty.smtp_port) as client:
        for _ in range(2):  # each reply starts the wait anew: 1.0 s in all, still served
            time.sleep(0.5)
            assert client.send(b"NOOP") == "250 2.0.0 OK"
        started = time.monotonic()
        assert client.reply() == "421 4.4.2 relay.test no command after 0.8 s, closing connection"
        assert client.closed()
        assert 0.6 < time.monotonic() - started < 10


def test_the_data_timeout_bounds_the_whole_message(hasty: RelayProcess) -> None:
    """A line every 0.3 s never lets the idle timeout (0.8 s) expire, but the message as
    a whole is cut at the DATA timeout, and nothing of it is stored."""
    address, _ = hasty.fresh_list(members=1)
    with talk(hasty.smtp_port) as client:
        assert client.send(b"MAIL FROM:<poster@outside.test>").startswith("250")
        assert client.send(f"RCPT TO:<{address}>".encode()).startswith("250")
        assert client.send(b"DATA").startswith("354")
        started = time.monotonic()
        client.write(b"Subject: slow\r\n\r\n")
        for _ in range(40):  # at most 12 s
            readable, _, _ = select.select([client.sock], [], [], 0.3)
            if readable:
                break
            client.write(b"one more line\r\n")
        assert client.reply() == (
            "421 4.4.2 relay.test message not complete after 0.8 s, closing connection")
        assert 0.6 < time.monotonic() - started < 10
        assert client.closed()
    messages, _ = hasty.counts()
    assert sum(messages.values()) == 0
