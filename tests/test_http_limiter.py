"""The failed-key limiter of the HTTP ingress, without a process: bounds and eviction."""

from __future__ import annotations

import pytest

from mailflow.ingress.limiter import MAX_CLIENTS, FailedAuthLimiter, client_key


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def attempt(limiter: FailedAuthLimiter, client: str) -> bool:
    """What the ingress does with a wrong key: look first, count only if let through."""
    if limiter.blocked_for(client):
        return False
    limiter.failed(client)
    return True


def test_a_spray_larger_than_the_table_does_not_unblock_a_blocked_client() -> None:
    clock = FakeMonotonic()
    limiter = FailedAuthLimiter(3, 60.0, monotonic=clock)
    for _ in range(3):
        assert attempt(limiter, "192.0.2.1")
    assert limiter.blocked_for("192.0.2.1") > 0
    # 2.5 times the table, one guess each, all within the window.
    spray = [f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}" for n in range(MAX_CLIENTS * 5 // 2)]
    for address in spray:
        attempt(limiter, address)
        clock.now += 0.001
    assert len(limiter) <= MAX_CLIENTS
    assert 0 < limiter.blocked_for("192.0.2.1") <= 60.0
    assert not attempt(limiter, "192.0.2.1")


def test_the_least_recently_failed_client_is_forgotten_first() -> None:
    clock = FakeMonotonic()
    limiter = FailedAuthLimiter(3, 60.0, max_clients=2, monotonic=clock)
    for client in ("192.0.2.1", "192.0.2.2", "192.0.2.1"):  # .1 failed last: twice
        attempt(limiter, client)
        clock.now += 1
    attempt(limiter, "192.0.2.3")  # the table is full: .2 goes, not .1
    clock.now += 1
    attempt(limiter, "192.0.2.1")
    assert limiter.blocked_for("192.0.2.1") > 0  # its two earlier failures were kept
    for _ in range(2):  # .2 starts again from nothing: two failures do not block it
        assert attempt(limiter, "192.0.2.2")
    assert limiter.blocked_for("192.0.2.2") == 0
    assert len(limiter) == 2


def test_a_table_full_of_blocks_makes_newcomers_share_one_count() -> None:
    clock = FakeMonotonic()
    limiter = FailedAuthLimiter(2, 60.0, max_clients=2, monotonic=clock)
    for client in ("192.0.2.1", "192.0.2.1", "192.0.2.2", "192.0.2.2"):
        assert attempt(limiter, client)
    clock.now += 1
    # No room and nothing to evict: the newcomers' failures add up, so a spray of fresh
    # addresses still gets max_failures guesses per window in all.
    assert attempt(limiter, "198.51.100.1")
    assert attempt(limiter, "198.51.100.2")
    assert not attempt(limiter, "198.51.100.3")
    assert len(limiter) == 2
    clock.now += 59.5  # the first block has expired, the shared count not yet
    assert limiter.blocked_for("192.0.2.1") == 0
    assert attempt(limiter, "198.51.100.4")  # takes the expired entry's place
    assert limiter.blocked_for("192.0.2.2") == 0  # expired too, but kept: there was no need
    assert limiter.blocked_for("198.51.100.4") == 0
    assert attempt(limiter, "198.51.100.4")
    assert limiter.blocked_for("198.51.100.4") == pytest.approx(60.0)


@pytest.mark.parametrize(("host", "key"), [
    ("192.0.2.1", "192.0.2.1"),
    ("2001:db8::1", "2001:db8::/64"),
    ("2001:DB8:0:0:ffff:1:2:3", "2001:db8::/64"),
    ("2001:db8:0:1::1", "2001:db8:0:1::/64"),
    ("fe80::1%eth0", "fe80::/64"),
    ("::ffff:192.0.2.1", "192.0.2.1"),
    ("unknown", "unknown"),
])
def test_clients_are_counted_per_ipv4_address_and_ipv6_64(host: str, key: str) -> None:
    assert client_key(host) == key


def test_one_ipv6_64_is_one_client() -> None:
    limiter = FailedAuthLimiter(2, 60.0)
    assert attempt(limiter, "2001:db8::1")
    assert attempt(limiter, "2001:db8::ffff:2")
    assert limiter.blocked_for("2001:db8::abcd:1234:5678:9") > 0
    assert limiter.blocked_for("2001:db8:0:1::1") == 0
