"""A DNS server on loopback that answers TXT questions from a table a test fills.

For DMARC (and DKIM key) lookups end to end: the relay's resolver is pointed at it with
``dns_resolver = "127.0.0.1:PORT"``.  UDP only, one thread, answers built by dnspython.
A name in ``silent`` gets no answer at all, so a resolver's timeout can be tested.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


@dataclass
class DnsServer:
    """TXT records by lower-case name (no final dot); every answer has ``ttl``."""

    txt: dict[str, list[str]] = field(default_factory=dict)
    silent: set[str] = field(default_factory=set)
    ttl: int = 300
    questions: list[str] = field(default_factory=list)
    port: int = 0

    def answer(self, wire: bytes) -> bytes | None:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        self.questions.append(name)
        if name in self.silent:
            return None
        records = self.txt.get(name)
        if records is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.TXT:
            quoted = [" ".join(f'"{chunk}"' for chunk in _chunks(text)) for text in records]
            response.answer.append(dns.rrset.from_text_list(
                question.name, self.ttl, dns.rdataclass.IN, dns.rdatatype.TXT, quoted))
        return response.to_wire()


def _chunks(text: str) -> list[str]:
    """A TXT value as character-strings of at most 255 bytes (a DKIM key is longer)."""
    return [text[i:i + 255] for i in range(0, len(text), 255)] or [""]


@contextmanager
def dns_server(txt: dict[str, list[str]] | None = None, *, ttl: int = 300
               ) -> Iterator[DnsServer]:
    """A running server on 127.0.0.1 (``.port``), stopped on exit."""
    server = DnsServer(txt=dict(txt or {}), ttl=ttl)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    server.port = sock.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                wire, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            try:
                reply = server.answer(wire)
            except Exception:  # a malformed query: no answer, as a real server might
                continue
            if reply is not None:
                sock.sendto(reply, peer)

    thread = threading.Thread(target=serve, name="test-dns", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()
