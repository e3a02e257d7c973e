"""The HTTP ingress's count of failed keys per client, bounded without forgetting a block.

A client with ``max_failures`` failed keys within ``window`` seconds is refused (429)
before its key is looked at, so keys cannot be guessed at line speed.  The table holds
at most ``max_clients`` clients.  When it is full, the client whose last failure is the
oldest among those *not* blocked is forgotten: a spray from many addresses can push
out other clients' partial counts, never a block.  If every entry is a live block,
newcomers share one count, so a spray larger than
the table still cannot guess more than ``max_failures`` times per window.

IPv6 clients are counted per /64: one host commonly holds a whole /64 and could
otherwise take a fresh address for every guess.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Final

log = logging.getLogger(__name__)

#: Clients tracked at most (about 1 KiB each with the default ten failures).
MAX_CLIENTS: Final = 10_000
IPV6_GROUP_BITS: Final = 64


def client_key(host: str) -> str:
    """The unit a client is counted in: an IPv4 address, an IPv6 /64, else the text."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        # From the integer: a scoped address (fe80::1%eth0) makes no network directly.
        prefix = int(ip) >> (128 - IPV6_GROUP_BITS) << (128 - IPV6_GROUP_BITS)
        return str(ipaddress.IPv6Network((prefix, IPV6_GROUP_BITS)))
    return str(ip)


class FailedAuthLimiter:
    """Failed authentications per client (:func:`client_key`) in a sliding window.

    Two tables in order of each client's last failure: ``_open`` (under the limit) and
    ``_blocked`` (reached it at its last failure; no failure is counted while blocked, so
    the order there is also the order of blocking).  A blocked entry whose window has
    passed is free again; it stays in ``_blocked`` until it fails again or is evicted.
    """

    def __init__(self, max_failures: int, window: float, max_clients: int = MAX_CLIENTS,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_clients = max_clients
        self._monotonic = monotonic
        self._open: OrderedDict[str, deque[float]] = OrderedDict()
        self._blocked: OrderedDict[str, deque[float]] = OrderedDict()
        self._shared: deque[float] = deque(maxlen=max_failures)

    def __len__(self) -> int:
        return len(self._open) + len(self._blocked)

    def _wait(self, failures: deque[float], now: float) -> float:
        """Seconds until ``failures`` allow another try (0: now)."""
        if len(failures) < self.max_failures:
            return 0.0
        return max(0.0, failures[0] + self.window - now)

    def _lookup(self, key: str) -> deque[float] | None:
        found = self._open.get(key)
        return found if found is not None else self._blocked.get(key)

    def blocked_for(self, client: str) -> float:
        """Seconds until ``client`` may try again (0: it may now)."""
        now = self._monotonic()
        failures = self._lookup(client_key(client))
        if failures is None:
            if self._has_room(now):
                return 0.0
            failures = self._shared
        return self._wait(failures, now)

    def failed(self, client: str) -> None:
        now = self._monotonic()
        key = client_key(client)
        failures = self._open.pop(key, None)
        if failures is None:
            failures = self._blocked.pop(key, None)
        if failures is None:
            if not self._make_room(now):
                self._shared.append(now)
                if self._wait(self._shared, now):
                    log.warning("failed-key table full of blocked clients (%d): clients "
                                "not in it share one count, which is now blocked",
                                len(self), extra={"action": "auth_limiter_full"})
                return
            failures = deque(maxlen=self.max_failures)
        failures.append(now)
        table = self._blocked if self._wait(failures, now) else self._open
        table[key] = failures  # popped above: it goes in as the most recent

    def _evictable(self, now: float) -> OrderedDict[str, deque[float]] | None:
        """The table whose first entry is the oldest unblocked one we can find cheaply.

        ``_open`` holds no block; of ``_blocked`` only the first entry is looked at (the
        one blocked longest ago), so this stays O(1) under a spray.
        """
        blocked_first = next(iter(self._blocked.values()), None)
        if blocked_first is not None and self._wait(blocked_first, now):
            blocked_first = None
        open_first = next(iter(self._open.values()), None)
        if open_first is None:
            return self._blocked if blocked_first is not None else None
        if blocked_first is not None and blocked_first[-1] < open_first[-1]:
            return self._blocked
        return self._open

    def _has_room(self, now: float) -> bool:
        return len(self) < self.max_clients or self._evictable(now) is not None

    def _make_room(self, now: float) -> bool:
        if len(self) < self.max_clients:
            return True
        table = self._evictable(now)
        if table is None:
            return False
        table.popitem(last=False)
        return True
