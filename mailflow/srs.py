"""The Sender Rewriting Scheme (Shevek's SRS, the address format of libsrs2).

A forwarded message keeps its original envelope sender only at the price of failing the
destination's SPF check (our address is not one of the sender domain's hosts).  SRS
rewrites the sender into an address of the forwarding domain that still names the
original, so SPF passes and a bounce can find its way back:

* ``SRS0=HHHHHHHH=TT=orig.example=local@alias.example`` for an ordinary sender;
* ``SRS1=HHHHHHHH=first.example==HHHHHHHH=TT=orig.example=local@alias.example`` when the
  sender is itself an SRS0 address of another forwarder (``first.example``): the bounce
  goes back to that forwarder, which alone can check its own hash;
* an SRS1 sender forwarded again keeps its first forwarder and gets our hash.

``HHHHHHHH`` is the HMAC-SHA256 of the address's other fields (lower-cased) under the
secret, base32, truncated to 8 characters (40 bits); ``TT`` is the day number modulo
1024 in base32 (libsrs2's timestamp).  Both are checked case-insensitively, since
relays on the way may change the case of a local part; the original local part comes
back as the address carries it.  libsrs2 uses a base64 HMAC-SHA1 of 4 characters: its
hash is case-sensitive, which is why ours is base32 and longer.  A reverse check
accepts the current secret and any older one, so a secret can be rotated without
stranding the bounces of the last ``max_age_days`` days.

No PyPI library is used: ``pysrs`` (last release 2018) and ``srslib`` are unmaintained,
and the scheme is a few lines of ``hmac``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

HASH_LENGTH = 8
DAY = 86400
STAMP_MODULUS = 1024  # two base32 characters
BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
SEPARATORS = "=+-"  # libsrs2 accepts any of these after the SRS0/SRS1 tag


class SrsError(ValueError):
    """An address that claims to be SRS but cannot be reversed (why is in the text)."""


def is_srs(address: str) -> bool:
    """Whether ``address``'s local part claims to be an SRS address (any case)."""
    local = address.rpartition("@")[0] if "@" in address else address
    return len(local) > 4 and local[:4].upper() in ("SRS0", "SRS1") and local[4] in SEPARATORS


def _stamp(now: float) -> str:
    day = int(now // DAY) % STAMP_MODULUS
    return BASE32[day >> 5] + BASE32[day & 31]


def _stamp_age(stamp: str, now: float) -> int:
    """Days since ``stamp`` (modulo the timestamp's range)."""
    stamp = stamp.upper()
    if len(stamp) != 2 or any(c not in BASE32 for c in stamp):
        raise SrsError("bad SRS timestamp")
    then = BASE32.index(stamp[0]) << 5 | BASE32.index(stamp[1])
    return (int(now // DAY) - then) % STAMP_MODULUS


@dataclass(frozen=True, slots=True)
class Srs:
    """Forward and reverse SRS addresses under ``secret`` (``old_secrets`` still verify)."""

    secret: str
    old_secrets: Sequence[str] = ()
    max_age_days: int = 21

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("SRS needs a secret")

    def _hash(self, secret: str, *fields: str) -> str:
        data = "\0".join(fields).lower().encode("utf-8")
        digest = hmac.new(secret.encode("utf-8"), data, hashlib.sha256).digest()
        return base64.b32encode(digest).decode("ascii")[:HASH_LENGTH]

    def _check_hash(self, given: str, *fields: str) -> None:
        given = given.upper()
        for secret in (self.secret, *self.old_secrets):
            if secret and hmac.compare_digest(self._hash(secret, *fields), given):
                return
        raise SrsError("SRS hash does not match")

    def forward(self, sender: str, domain: str, now: float) -> str:
        """The envelope sender for forwarding mail from ``sender`` through ``domain``.

        The null sender, and a sender without a domain, stay as they are: there is
        nothing to send a bounce back to.
        """
        local, at, host = sender.rpartition("@")
        if not at or not local or not host:
            return sender
        if is_srs(local):
            tag, rest = local[:4].upper(), local[5:]
            if tag == "SRS0":  # SRS0=HHH=TT=d=l@host -> SRS1=HASH=host==HHH=TT=d=l
                first, srs0 = host, "=" + rest
            else:              # SRS1=HHH=first==rest@host -> SRS1=HASH=first==rest
                parts = rest.split("=", 2)
                if len(parts) < 3 or not parts[1]:
                    return self._srs0(local, host, domain, now)
                first, srs0 = parts[1], parts[2]
            return f"SRS1={self._hash(self.secret, first, srs0)}={first}={srs0}@{domain}"
        return self._srs0(local, host, domain, now)

    def _srs0(self, local: str, host: str, domain: str, now: float) -> str:
        stamp = _stamp(now)
        return f"SRS0={self._hash(self.secret, stamp, host, local)}={stamp}={host}={local}@{domain}"

    def reverse(self, address: str, now: float) -> str:
        """Where a bounce to ``address`` (one of ours) goes; :class:`SrsError` if forged,
        expired or malformed."""
        local = address.rpartition("@")[0]
        if not is_srs(local):
            raise SrsError("not an SRS address")
        tag, rest = local[:4].upper(), local[5:]
        if tag == "SRS1":
            parts = rest.split("=", 2)
            if len(parts) < 3 or not parts[1] or parts[2][:1] not in tuple(SEPARATORS):
                raise SrsError("malformed SRS1 address")
            given, first, srs0 = parts

            self._check_hash(given, first, srs0)
            return f"SRS0{srs0}@{first}"
        parts = rest.split("=", 3)
        if len(parts) < 4 or not all(parts):
            raise SrsError("malformed SRS0 address")
        given, stamp, host, original = parts
        if _stamp_age(stamp, now) > self.max_age_days:
            raise SrsError("SRS address expired")
        self._check_hash(given, stamp, host, original)
        return f"{original}@{host}"


def parse(address: str) -> str | None:
    """Where a bounce to ``address`` goes, by its structure alone (no hash or age check:
    for a message whose recipient :meth:`Srs.reverse` checked before it was accepted);
    None if it is no SRS address."""
    local = address.rpartition("@")[0]
    if not is_srs(local):
        return None
    tag, rest = local[:4].upper(), local[5:]
    if tag == "SRS1":
        parts = rest.split("=", 2)
        return f"SRS0{parts[2]}@{parts[1]}" if len(parts) == 3 and parts[1] else None
    parts = rest.split("=", 3)
    return f"{parts[3]}@{parts[2]}" if len(parts) == 4 and all(parts) else None
