"""The DMARC policy an author's domain publishes, looked up in DNS and kept for its TTL.

A list with ``--dmarc auto`` rewrites ``From:`` only for authors whose domain asks
receivers to quarantine or reject mail that fails DMARC (RFC 7489): a list copy fails it,
since the list changes what the author's domain signed.  The answer is a DNS question per
author domain, so it is asked once per TTL (not once per copy), and never on the event
loop's time: dnspython's asyncio resolver, with a timeout.

When the answer cannot be had (timeout, SERVFAIL), the copy is rewritten: a needless
rewrite costs the author's address in ``From:``; a missing one costs the delivery.
Such an answer is kept for :data:`UNSURE_TTL` only.  dnspython and the Public Suffix
List are loaded on the first lookup: a relay without ``auto`` lists never pays for them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from mailflow import addresses
from mailflow.config import nameserver_addresses
from mailflow.lru import MISSING, TtlLRU

if TYPE_CHECKING:
    import dns.asyncresolver
    import dns.nameserver

log = logging.getLogger(__name__)

STRICT: Final = frozenset({"quarantine", "reject"})
UNSURE_TTL: Final = 60.0
MIN_TTL: Final = 60.0        # a record with TTL 0 is still not asked for every copy
MAX_TTL: Final = 86_400.0
# A domain is at most 253 bytes and a policy a word: the cache's bytes are bounded by
# its entry count.
MAX_ENTRIES: Final = 10_000


def nameservers(spec: str) -> list[dns.nameserver.Nameserver]:
    """``dns_resolver``'s addresses as dnspython name servers."""
    import dns.nameserver

    return [dns.nameserver.Do53Nameserver(host, port)
            for host, port in nameserver_addresses(spec)]


def parse_policy(record: str) -> str | None:
    """The ``p=`` tag of a DMARC record (``None`` if it is not one), lower-cased."""
    tags = [tag.strip() for tag in record.split(";")]
    if not tags or tags[0].replace(" ", "").lower() != "v=dmarc1":
        return None
    for tag in tags[1:]:
        name, _, value = tag.partition("=")
        if name.strip().lower() == "p":
            return value.strip().lower()
    return None


class DmarcPolicies:
    """``p=`` of the DMARC record that governs a domain (its own, else its
    organizational domain's, RFC 7489 section 6.6.3), cached by TTL."""

    def __init__(self, resolver_spec: str = "", timeout: float = 2.0, *,
                 clock: Callable[[], float] = time.monotonic,
                 max_entries: int = MAX_ENTRIES) -> None:
        self._resolver_spec = resolver_spec
        self._timeout = timeout
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._clock = clock
        self._cache: TtlLRU[str, str | None] = TtlLRU(max_entries)
        self._suffixes: Any = None  # publicsuffixlist.PublicSuffixList, on first use

    async def requires_rewrite(self, author: str) -> bool:
        """Whether a list copy of mail from ``author`` must carry the list's From:."""
        domain = addresses.split(author)[1].lower() if "@" in author else ""
        if not domain:
            return False
        policy = await self.policy(domain)
        return policy is None or policy in STRICT

    async def policy(self, domain: str) -> str | None:
        """The governing ``p=`` value, ``"none"`` when no record governs the domain,
        ``None`` when DNS could not answer."""
        now = self._clock()
        cached = self._cache.get(domain, now)
        if cached is not MISSING:
            return cached
        policy, ttl = await self._lookup(domain)
        self._cache.put(domain, policy, now + ttl)
        return policy

    async def _lookup(self, domain: str) -> tuple[str | None, float]:
        import dns.exception
        import dns.resolver

        try:
            found = await self._record(domain)
            if found is None:
                organizational = self._organizational(domain)
                if organizational != domain:
                    found = await self._record(organizational)
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            log.warning("DMARC lookup for %s failed: %s; copies are rewritten for now",
                        domain, exc, extra={"action": "dmarc_lookup_failed"})
            return None, UNSURE_TTL
        if found is None:
            return "none", MAX_TTL / 24
        policy, ttl = found
        return policy, min(max(ttl, MIN_TTL), MAX_TTL)

    async def _record(self, domain: str) -> tuple[str, float] | None:
        """(policy, TTL) of the DMARC record at ``_dmarc.<domain>``, or None."""
        import dns.resolver

        try:
            answer = await self._dns().resolve(f"_dmarc.{domain}", "TXT",
                                               lifetime=self._timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        policies = [p for p in (parse_policy(_text(r.strings)) for r in answer) if p]
        if len(policies) != 1:  # RFC 7489 6.6.3: several records are as none
            return None
        rrset = answer.rrset
        return policies[0], float(rrset.ttl if rrset is not None else MIN_TTL)

    def _dns(self) -> dns.asyncresolver.Resolver:
        """The resolver, made on first use: dnspython costs memory a relay without
        ``--dmarc auto`` lists need not pay."""
        if self._resolver is None:
            import dns.asyncresolver

            resolver = dns.asyncresolver.Resolver(configure=not self._resolver_spec)
            if self._resolver_spec:
                resolver.nameservers = nameservers(self._resolver_spec)
            resolver.timeout = self._timeout  # each try; resolve(lifetime=) bounds all
            self._resolver = resolver
        return self._resolver

    def _organizational(self, domain: str) -> str:
        """The registrable domain (Public Suffix List, loaded on first use)."""
        from publicsuffixlist import PublicSuffixList

        if self._suffixes is None:
            self._suffixes = PublicSuffixList()
        registrable: str | None = self._suffixes.privatesuffix(domain)
        return registrable or domain


def _text(strings: Sequence[bytes]) -> str:
    return b"".join(strings).decode("ascii", "replace")
