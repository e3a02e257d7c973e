"""A small authoritative DNS server on loopback, for tests that look records up.

It answers TXT questions (over UDP) from the records a test gives it, ``NXDOMAIN`` for
the rest, in a thread of its own, so DKIM verification and DMARC look-ups run against a
real resolver and real DNS messages (dnspython's wire format) without the network.  The
relay under test is pointed at it with ``dns_resolver = "127.0.0.1:PORT"``;
:meth:`DnsServer.txt` is a look-up function of dkimpy's ``dnsfunc`` form.  A name in
``silent`` gets no answer at all, so a resolver's timeout can be tested.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Final

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset

TTL: Final = 60
_POLL: Final = 0.1  # seconds the serving thread waits for a question before checking stop
_STOP_TIMEOUT: Final = 5.0


class DnsServer:
    """TXT records by name (``selector._domainkey.example.test``), served on 127.0.0.1."""

    def __init__(self, records: Mapping[str, Sequence[str]] | None = None, *,
                 ttl: int = TTL) -> None:
        self.records: dict[str, list[str]] = {}
        for name, values in (records or {}).items():
            for value in values:
                self.add_txt(name, value)
        self.ttl = ttl
        self.silent: set[str] = set()
        self.asked: list[str] = []  # every question's name, in order
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(_POLL)
        self.port: int = self._socket.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dns-server", daemon=True)

    @property
    def questions(self) -> int:
        return len(self.asked)

    def add_txt(self, name: str, value: str) -> None:
        """Publish ``value`` (cut into strings of 255 characters, as zone files do)."""
        self.records.setdefault(name.lower().rstrip("."), []).append(value)

    def start(self) -> DnsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(_STOP_TIMEOUT)
        self._socket.close()

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    def resolver(self) -> dns.resolver.Resolver:
        """A resolver that asks this server only."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.port
        return resolver

    def txt(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        """The TXT record of ``name`` through a real query, as dkimpy's ``dnsfunc``."""
        text = name.decode() if isinstance(name, bytes) else name
        try:
            answer = self.resolver().resolve(text, "TXT", lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(next(iter(answer)).strings)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._socket.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:  # not a DNS message: no answer, as a server would
                continue
            names = [q.name.to_text().lower().rstrip(".") for q in query.question]
            self.asked.extend(names)
            if any(name in self.silent for name in names):
                continue
            self._socket.sendto(self._answer(query).to_wire(), peer)

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        found = False
        for question in query.question:
            values = self.records.get(question.name.to_text().lower().rstrip("."))
            if values is None:
                continue
            found = True
            if question.rdtype != dns.rdatatype.TXT:
                continue
            quoted = [" ".join(f'"{v[i:i + 255]}"' for i in range(0, len(v), 255))
                      for v in values]
            response.answer.append(dns.rrset.from_text_list(
                question.name, self.ttl, dns.rdataclass.IN, dns.rdatatype.TXT, quoted))
        if not found:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response


@contextmanager
def dns_server(records: Mapping[str, Sequence[str]] | None = None, *, ttl: int = TTL
               ) -> Iterator[DnsServer]:
    """A running server with ``records`` (TXT values by name), stopped on exit."""
    with DnsServer(records, ttl=ttl) as server:
        yield server
