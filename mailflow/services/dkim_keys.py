"""DKIM keys: made for a domain, and found for each copy the relay signs.

``mailflow dkim keygen`` makes an RSA key (2048 bits: RFC 8301 asks for at least 1024,
and 2048 still fits one DNS TXT record in 255-character strings) with the
``cryptography`` package and stores it in the ``dkim_keys`` table; the signing itself
is dkimpy's (``pipeline/send/dkim.py``).

:class:`DkimKeyBook` answers the send path's question "which key signs copies of this
domain?" from the store, remembering each domain's answer (a key or none) for ``ttl``
seconds, bounded in count: a key made or replaced in another process signs from at
most ``ttl`` later.  What :meth:`DkimKeyBook.signer` gives signs on the caller's thread
(the scheduler's rendering thread): a 2048-bit RSA signature and the body hash are CPU
work of about a millisecond per copy.
"""

from __future__ import annotations

import base64
import functools
import re
import time
from collections.abc import Awaitable, Callable
from typing import Final

from mailflow import addresses
from mailflow.clock import Clock
from mailflow.errors import InvalidInput
from mailflow.lru import MISSING, TtlLRU
from mailflow.model import DkimKey, MailingList
from mailflow.pipeline.send.dkim import dkim_signed
from mailflow.store.runner import StoreRunner

KEY_BITS: Final = 2048
DOMAINS_KEPT: Final = 1000  # domains whose answer is remembered (a key is ~2 kB)
# RFC 6376 3.1: a selector is one or more DNS labels.
_SELECTOR: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
                              r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
SELECTOR_MAX_LENGTH: Final = 63

Fetch = Callable[[str], Awaitable[DkimKey | None]]


def default_selector(now: float) -> str:
    """A new selector per day (``mf20261201``), so a replaced key's record can stay."""
    return "mf" + time.strftime("%Y%m%d", time.gmtime(now))


def validated_selector(selector: str) -> str:
    selector = selector.strip().lower()
    if not _SELECTOR.fullmatch(selector) or len(selector) > SELECTOR_MAX_LENGTH:
        raise InvalidInput(f"invalid selector {selector!r}: DNS labels of letters, digits "
                           f"and hyphens separated by dots, at most {SELECTOR_MAX_LENGTH} "
                           "characters")
    return selector


def new_key(domain: str, selector: str, now: float) -> DkimKey:
    """A new RSA key pair for ``domain`` (CPU work of a fraction of a second)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    pem = private.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption()).decode()
    public = private.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return DkimKey(domain, selector, pem, base64.b64encode(public).decode(), now)


class DkimKeyBook:
    """The key that signs each domain's copies, from the store, remembered for ``ttl``."""

    def __init__(self, fetch: Fetch, clock: Clock, ttl: float) -> None:
        self._fetch = fetch
        self.clock = clock
        self.ttl = ttl
        self._by_domain: TtlLRU[str, DkimKey | None] = TtlLRU(DOMAINS_KEPT)

    async def key_for(self, mailing_list: MailingList) -> DkimKey | None:
        """The key of the domain of the list or alias a copy is sent for."""
        domain = addresses.split(mailing_list.address)[1]
        now = self.clock.now()
        kept = self._by_domain.get(domain, now)
        if kept is not MISSING:
            return kept
        key = await self._fetch(domain)
        self._by_domain.put(domain, key, now + self.ttl)
        return key

    async def signer(self, mailing_list: MailingList) -> Callable[[bytes], bytes] | None:
        """What signs a copy for ``mailing_list``'s domain (None: the domain has no key).
        CPU work: the caller runs it on a thread, with the rendering it follows, so a
        copy costs one hop off the loop, not two."""
        key = await self.key_for(mailing_list)
        return None if key is None else functools.partial(dkim_signed, key=key)


def store_key_book(runner: StoreRunner, clock: Clock, ttl: float) -> DkimKeyBook:
    async def fetch(domain: str) -> DkimKey | None:
        return await runner.read(runner.repo.dkim_key, domain)

    return DkimKeyBook(fetch, clock, ttl)
