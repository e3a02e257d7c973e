"""The SRS codec, without a process: forward, reverse, and every way a reverse fails."""

from __future__ import annotations

import pytest

from mailflow import srs
from mailflow.srs import Srs, SrsError

NOW = 1_800_000_000.0
DAY = 86400.0
CODEC = Srs("s3cret")


def test_srs0_round_trip() -> None:
    rewritten = CODEC.forward("alice@origin.example", "alias.test", NOW)
    assert rewritten.startswith("SRS0=")
    assert rewritten.endswith("=origin.example=alice@alias.test")
    assert CODEC.reverse(rewritten, NOW) == "alice@origin.example"
    assert srs.parse(rewritten) == "alice@origin.example"


def test_local_part_with_separators_survives() -> None:
    rewritten = CODEC.forward("a=b+c-d@origin.example", "alias.test", NOW)
    assert CODEC.reverse(rewritten, NOW) == "a=b+c-d@origin.example"


@pytest.mark.parametrize("sender", ["", "MAILER-DAEMON", "@x.test", "bob@"])
def test_null_and_domainless_senders_stay(sender: str) -> None:
    assert CODEC.forward(sender, "alias.test", NOW) == sender


def test_reverse_is_case_insensitive() -> None:
    rewritten = CODEC.forward("Alice@Origin.example", "alias.test", NOW)
    assert CODEC.reverse(rewritten.lower(), NOW) == "alice@origin.example"
    assert CODEC.reverse(rewritten.upper(), NOW) == "ALICE@ORIGIN.EXAMPLE"


def test_forged_hash_is_refused() -> None:
    rewritten = CODEC.forward("alice@origin.example", "alias.test", NOW)
    tag, hash_, rest = rewritten.split("=", 2)
    forged = f"{tag}={'A' if hash_[0] != 'A' else 'B'}{hash_[1:]}={rest}"
    with pytest.raises(SrsError, match="hash"):
        CODEC.reverse(forged, NOW)
    # Another sender under a valid hash: the hash covers the whole original address.
    with pytest.raises(SrsError, match="hash"):
        CODEC.reverse(rewritten.replace("=alice@", "=mallory@"), NOW)
    with pytest.raises(SrsError, match="hash"):
        Srs("other").reverse(rewritten, NOW)


def test_expired_after_max_age() -> None:
    rewritten = CODEC.forward("alice@origin.example", "alias.test", NOW)
    assert CODEC.reverse(rewritten, NOW + 21 * DAY) == "alice@origin.example"
    with pytest.raises(SrsError, match="expired"):
        CODEC.reverse(rewritten, NOW + 22 * DAY)
    with pytest.raises(SrsError, match="expired"):  # from the future
        CODEC.reverse(rewritten, NOW - 2 * DAY)


def test_old_secrets_still_verify() -> None:
    rewritten = Srs("old").forward("alice@origin.example", "alias.test", NOW)
    assert Srs("new", ("old",)).reverse(rewritten, NOW) == "alice@origin.example"
    assert Srs("new", ("old",)).forward("alice@origin.example", "alias.test", NOW) != rewritten
    with pytest.raises(SrsError):
        Srs("new").reverse(rewritten, NOW)


def test_srs1_for_a_reforwarded_srs0_and_back() -> None:
    first = Srs("first-secret")
    srs0 = first.forward("alice@origin.example", "first.example", NOW)
    srs1 = CODEC.forward(srs0, "alias.test", NOW)
    assert srs1.startswith("SRS1=")
    assert srs1.endswith("@alias.test")
    assert f"=first.example==" in srs1
    back = CODEC.reverse(srs1, NOW)
    assert back == srs0  # the bounce goes to the first forwarder ...
    assert first.reverse(back, NOW) == "alice@origin.example"  # ... which checks its own
    assert srs.parse(srs1) == srs0


def test_srs1_forwarded_again_keeps_the_first_forwarder() -> None:
    srs0 = Srs("first").forward("alice@origin.example", "first.example", NOW)
    srs1 = Srs("second").forward(srs0, "second.example", NOW)
    again = CODEC.forward(srs1, "alias.test", NOW)
    assert again.startswith("SRS1=") and "=first.example==" in again
    assert CODEC.reverse(again, NOW) == srs0
    with pytest.raises(SrsError, match="hash"):  # the second forwarder's hash is not ours
        CODEC.reverse(srs1.replace("@second.example", "@alias.test"), NOW)


@pytest.mark.parametrize("address", [
    "alice@alias.test", "SRS0=@alias.test", "SRS0=abc=TT=host@alias.test",
    "SRS0=abcdefgh==host.example=bob@alias.test", "SRS0=abcdefgh=!!=host=bob@alias.test",
    "SRS1=abcdefgh=host.example@alias.test", "SRS1=abcdefgh==x@alias.test",
])
def test_malformed_addresses_are_refused(address: str) -> None:
    with pytest.raises(SrsError):
        CODEC.reverse(address, NOW)


def test_is_srs() -> None:
    assert srs.is_srs("srs0=x=y=z=w@d") and srs.is_srs("SRS1+x@d")
    assert not srs.is_srs("srs0@d") and not srs.is_srs("srs2=x@d") and not srs.is_srs("bob@d")


def test_a_secret_is_required() -> None:
    with pytest.raises(ValueError):
        Srs("")
