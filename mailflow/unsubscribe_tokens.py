"""Per-member unsubscribe tokens for RFC 8058 one-click URLs.

A one-click ``List-Unsubscribe`` URL must unsubscribe its member without a login, so
the URL itself is the credential: it names the member and carries an HMAC-SHA256 of
(list, member) under a secret only the relay knows.  Nothing is stored per token, so a
copy rendered for a member a year ago still works while the member is on the list, and
a forged or altered token is refused without a database look-up.

Form: ``base64url(member address) "." base32(HMAC)[:26]`` (130 bits), no padding; the
HMAC is compared lower-cased and in constant time.  Old secrets keep verifying, so a
secret can be rotated without breaking the links of mail already delivered.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

MAC_LENGTH: Final = 26
_MAC_BYTES: Final = -(-MAC_LENGTH // 8) * 5  # whole base32 blocks covering MAC_LENGTH
ADDRESS_MAX_LENGTH: Final = 320


class BadToken(ValueError):
    """A token that does not name a member of the list under any known secret."""


@dataclass(frozen=True, slots=True)
class UnsubscribeTokens:
    """Makes and checks tokens under ``secret`` (``old_secrets`` still verify)."""

    secret: str
    old_secrets: Sequence[str] = ()

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("unsubscribe tokens need a secret")

    def token(self, list_address: str, member: str) -> str:
        """The token of ``member`` on ``list_address`` (both canonical addresses)."""
        name = base64.urlsafe_b64encode(member.encode("utf-8")).decode().rstrip("=")
        return f"{name}.{_mac(self.secret, list_address, member)}"

    def member(self, list_address: str, token: str) -> str:
        """The member ``token`` names on ``list_address``; :class:`BadToken` if forged,
        altered or malformed."""
        name, dot, mac = token.partition(".")
        if not dot or not name or len(mac) != MAC_LENGTH or len(name) > ADDRESS_MAX_LENGTH * 2:
            raise BadToken("malformed unsubscribe token")
        try:
            member = base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise BadToken("malformed unsubscribe token") from None
        given = mac.lower().encode()
        for secret in (self.secret, *self.old_secrets):
            if hmac.compare_digest(given, _mac(secret, list_address, member).encode()):
                return member
        raise BadToken("this unsubscribe link is not valid for this list")


def _mac(secret: str, list_address: str, member: str) -> str:
    data = f"{list_address.lower()}\0{member.lower()}".encode()
    digest = hmac.new(secret.encode("utf-8"), data, hashlib.sha256).digest()
    # Base32 writes 8 characters per 5 bytes: only the bytes the MAC keeps are encoded
    # (the same characters; one is made for every personalized copy).
    return base64.b32encode(digest[:_MAC_BYTES]).decode().lower()[:MAC_LENGTH]
