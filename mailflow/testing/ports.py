"""Loopback ports for test and benchmark servers, without the classic free-port race.

A port found free by binding port 0 and closing the socket can be taken by anyone
before the server binds it: another server picking "a free port" the same way, or the
kernel handing it out as the local port of an outgoing connection.  Three remedies,
best first:

* :func:`listening_socket`: bind port 0 and keep the socket; a server that accepts a
  socket (``loop.create_server(sock=...)``) serves it, so there is no window at all.
* :func:`free_port` *reserves* the port for servers in other processes (a relay, Postfix):
  it accepts one connection on it and closes the accepted end first, which leaves that
  end in TIME_WAIT.  For about a minute the kernel neither hands the port out as a
  local port nor gives it to another ``bind(port 0)``, while a server binding it with
  SO_REUSEADDR (asyncio, uvicorn, the relay and Postfix all do) gets it at once.
* Whoever still loses the race (someone else bound that very number explicitly) sees
  EADDRINUSE and picks another port: :func:`address_in_use` recognises that in a
  server's log, and :func:`listening_ports` tells which process really listens on a
  port, so a foreign server is never mistaken for ours.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path

ATTEMPTS = 5  # tries with fresh ports before a start-up reports EADDRINUSE for good


def listening_socket(host: str = "127.0.0.1", port: int = 0, backlog: int = 128
                     ) -> socket.socket:
    """A listening TCP socket on ``host`` (port 0: the kernel picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def port_of(sock: socket.socket) -> int:
    port: int = sock.getsockname()[1]
    return port


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on, reserved (TIME_WAIT) for a server started soon."""
    with listening_socket(host, 0, 1) as server:
        port = port_of(server)
        with socket.create_connection((host, port), timeout=5):
            accepted, _ = server.accept()
            accepted.close()  # the server side closes first: it is the end in TIME_WAIT
    return port


def address_in_use(text: str) -> bool:
    """Whether a server's output says that it could not bind its address."""
    folded = text.lower()  # asyncio words it "address already in use"
    return os.strerror(errno.EADDRINUSE).lower() in folded or "eaddrinuse" in folded


def wait_for_port(host: str, port: int, timeout: float = 20.0) -> bool:
    """Poll until something accepts connections on host:port; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def socket_inodes(pid: int) -> set[str]:
    """The inodes of ``pid``'s open sockets (Linux /proc), to tell whose a connection is."""
    inodes: set[str] = set()
    try:
        entries = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return inodes
    for entry in entries:
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def descendants(pid: int) -> list[int]:
    """``pid``'s children, grandchildren and so on (from /proc/PID/stat's ppid)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(parents.get(child, []))
    return found


def listening_ports(pid: int, *, tree: bool = False) -> set[int] | None:
    """TCP ports process ``pid`` (with ``tree``: or one of its descendants) listens on,
    by its own descriptors; None without /proc."""
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].exists():
        return None
    inodes = socket_inodes(pid)
    for child in descendants(pid) if tree else []:
        inodes |= socket_inodes(child)
    ports: set[int] = set()
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is HEXIP:HEXPORT, st 0A is LISTEN, the inode is field 9.
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
