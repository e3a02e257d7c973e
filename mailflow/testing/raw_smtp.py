"""A raw SMTP/LMTP client for tests: bytes out, whole replies back as text.

smtplib waits for each reply before the next command and refuses to send what a hostile
or a pipelining client sends; this one writes exactly the bytes it is given, so a group
of commands sent with :meth:`RawClient.write` really is one write.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


class RawClient:
    """One conversation over a connected socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")

    def reply(self) -> str:
        """The next whole reply (its lines joined by ``\\n``); ``""`` once the server
        closed the connection."""
        lines: list[str] = []
        while True:
            line = self.file.readline()
            if not line:
                return "\n".join(lines)
            lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            if line[3:4] != b"-":
                return "\n".join(lines)

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, line: bytes) -> str:
        """One command and its reply."""
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        """Whether the server closed the connection (the next read ends instead of waiting)."""
        return self.file.readline() == b""


@contextmanager
def connect(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> Iterator[RawClient]:
    """A connection, the greeting not read yet."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        yield RawClient(sock)


@contextmanager
def talk(port: int, hello: bytes = b"EHLO client.test") -> Iterator[RawClient]:
    """A session past the greeting and ``hello``."""
    with connect(port) as client:
        greeting = client.reply()
        assert greeting.startswith("220 "), greeting
        answer = client.send(hello)
        assert answer.startswith("250"), answer
        yield client
