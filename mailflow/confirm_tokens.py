"""Signed, expiring tokens that confirm a subscription or an unsubscription (double opt-in).

A request to join or leave a list (by mail or on the list's page) is carried out only
once the address shows it reads its mail: the relay mails it a token, and the token
coming back (a reply to the confirmation, or the confirmation page's button) is the
proof.  As :mod:`mailflow.unsubscribe_tokens`, nothing is stored per token: it names its
action, address and expiry and carries an HMAC-SHA256 of (list, action, address,
expiry) under a key derived from the unsubscribe secret, so a forged, altered, expired
or other list's token is refused without a database look-up.  A token can be used more
than once until it expires (the second use finds the work done).

Form: ``<j|l><expiry, hex> "." base64url(address) "." base32(HMAC)[:26]`` -- letters,
digits, ``.``, ``-`` and ``_`` only, so it survives a Subject line, a URL path and a
mail client's reply.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

MAC_LENGTH: Final = 26
ADDRESS_MAX_LENGTH: Final = 320
DEFAULT_MAX_AGE: Final = 3 * 86_400.0
_KEY_LABEL: Final = b"mailflow confirm v1"
Action = Literal["join", "leave"]
_ACTIONS: Final[dict[str, str]] = {"join": "j", "leave": "l"}
_BY_LETTER: Final[dict[str, Action]] = {"j": "join", "l": "leave"}
#: A token anywhere in a text (a reply's subject or first lines).
TOKEN_PATTERN: Final = re.compile(
    r"\b[jl][0-9a-f]{1,12}\.[A-Za-z0-9_-]{2,440}\.[A-Za-z2-7]{26}\b")


class BadToken(ValueError):
    """A token that is malformed, forged, for another list, or expired (the text says)."""


@dataclass(frozen=True, slots=True)
class Confirmation:
    """What a valid token confirms."""

    action: Action
    address: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class ConfirmTokens:
    """Makes and checks tokens under ``secret`` (``old_secrets`` still verify), valid for
    ``max_age`` seconds."""

    secret: str
    old_secrets: Sequence[str] = ()
    max_age: float = DEFAULT_MAX_AGE

    _keys: tuple[bytes, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("confirmation tokens need a secret")
        object.__setattr__(self, "_keys", tuple(
            hmac.new(s.encode("utf-8"), _KEY_LABEL, hashlib.sha256).digest()
            for s in (self.secret, *self.old_secrets) if s))

    def token(self, list_address: str, address: str, action: Action, now: float) -> str:
        """A token confirming ``action`` of ``address`` (canonical) on ``list_address``."""
        expires = int(now + self.max_age)
        name = base64.urlsafe_b64encode(address.encode("utf-8")).decode().rstrip("=")
        head = f"{_ACTIONS[action]}{expires:x}"
        return f"{head}.{name}.{_mac(self._keys[0], list_address, head, address)}"

    def check(self, list_address: str, token: str, now: float) -> Confirmation:
        """What ``token`` confirms on ``list_address``; :class:`BadToken` if it is not a
        valid token of that list, or has expired."""
        head, name, mac = _parts(token)
        try:
            address = base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise BadToken("malformed confirmation token") from None
        given = mac.lower().encode()
        if not any(hmac.compare_digest(given, _mac(key, list_address, head, address).encode())
                   for key in self._keys):
            raise BadToken("this confirmation token is not valid for this list")
        expires = float(int(head[1:], 16))
        if now > expires:
            raise BadToken("this confirmation token has expired; ask again")
        return Confirmation(_BY_LETTER[head[0]], address, expires)


def _parts(token: str) -> tuple[str, str, str]:
    parts = token.strip().split(".")
    if (len(parts) != 3 or len(parts[2]) != MAC_LENGTH or not parts[1]
            or len(parts[1]) > ADDRESS_MAX_LENGTH * 2 or len(parts[0]) < 2
            or len(parts[0]) > 13 or parts[0][0] not in _BY_LETTER):
        raise BadToken("malformed confirmation token")
    try:
        int(parts[0][1:], 16)
    except ValueError:
        raise BadToken("malformed confirmation token") from None
    return parts[0], parts[1], parts[2]


def _mac(key: bytes, list_address: str, head: str, address: str) -> str:
    data = f"{list_address.lower()}\0{head}\0{address.lower()}".encode()
    digest = hmac.new(key, data, hashlib.sha256).digest()
    return base64.b32encode(digest).decode().lower()[:MAC_LENGTH]
