"""VERP: a per-member envelope sender, ``LIST-bounces+<token>@d``, so a bounce names
the member it is about without its body being parsed.

The token is the HMAC-SHA256 of the list's address and the member's address (lower
case) under a key derived from the installation's SRS secret, base32, truncated to
:data:`TOKEN_LENGTH` characters (65 bits): a bounce to a token no member of the list
has is not counted against anyone (it falls back to parsing).  Base32 and a
case-insensitive comparison, because relays on the way may change the case of a local
part.  Mailman's VERP puts the member's address itself in the local part
(``list-bounces+alice=example.org@``): readable, but it shows the address to whoever
handles the bounce and overruns the 64 octets of a local part for long addresses; a
token of fixed length does neither, at the price of one look-up among the list's
members when a bounce comes back.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field

from mailflow import addresses

TOKEN_LENGTH = 13
_TOKEN_BYTES = -(-TOKEN_LENGTH // 8) * 5
_KEY_LABEL = b"mailflow verp v1"


@dataclass(frozen=True, slots=True)
class Verp:
    secret: str

    _key: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("VERP needs a secret")
        # Derived once: a token is made for every personalized copy.
        object.__setattr__(self, "_key", hmac.new(self.secret.encode("utf-8"), _KEY_LABEL,
                                                  hashlib.sha256).digest())

    def token(self, list_address: str, member: str) -> str:
        data = f"{list_address}\0{member}".lower().encode("utf-8")
        digest = hmac.new(self._key, data, hashlib.sha256).digest()
        # Only the whole base32 blocks (5 bytes, 8 characters) that cover the token.
        return base64.b32encode(digest[:_TOKEN_BYTES]).decode("ascii")[:TOKEN_LENGTH].lower()

    def sender(self, list_address: str, member: str) -> str:
        """The envelope sender of ``member``'s copy: ``LIST-bounces+<token>@d``."""
        local, domain = addresses.split(addresses.bounces_address(list_address))
        return f"{local}+{self.token(list_address, member)}@{domain}"

    def member(self, list_address: str, token: str, members: list[str]) -> str | None:
        """Which of ``members`` ``token`` names (any case), or None."""
        given = token.lower()
        return next((m for m in members
                     if hmac.compare_digest(self.token(list_address, m), given)), None)


def token_of(address: str) -> str:
    """The tag of a ``LIST-bounces+<token>@d`` address ('' without one)."""
    local = address.rpartition("@")[0]
    base, _, tag = local.partition(addresses.TAG_SEPARATOR)
    return tag if base.lower().endswith(addresses.BOUNCES_SUFFIX) else ""
