"""The SRS codec, without a process: forward, reverse, and every way a reverse fails."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from mailflow import srs
from mailflow.config import Settings
from mailflow.errors import InvalidSrsAddress, UnknownDomain
from mailflow.model import (
    RELAYED,
    Envelope,
    Event,
    InboundMessage,
    ListKind,
    MailingList,
    NewDelivery,
    Resolution,
)
from mailflow.pipeline.chain import run_process
from mailflow.pipeline.process.expand import expand
from mailflow.pipeline.send.envelope import envelope_sender
from mailflow.services.accept import AcceptPolicy, AcceptService
from mailflow.services.installation import srs_codec
from mailflow.srs import Srs, SrsError
from mailflow.store import Repository
from mailflow.testing.clock import FakeClock

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
    assert "=first.example==" in srs1
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


# -- where the relay uses it: RCPT, expansion, the envelope sender of a copy -------------

ALIAS = MailingList(2, "info@alias.test", ListKind.ALIAS, "", 0, 0.0)
TEAM = MailingList(1, "team@alias.test", ListKind.LIST, "", 0, 0.0)


async def served(canonical: str) -> Resolution:
    """Every address of alias.test is unknown (as SRS addresses are to the store)."""
    return Resolution("unknown_address" if canonical.endswith("@alias.test")
                      else "unknown_domain")


class NoCommits:
    async def commit(self, message: object, data: bytes, events: Sequence[Event] = ()) -> None:
        raise AssertionError("nothing is stored in these tests")


def accept_service(clock: FakeClock, codec: Srs | None = CODEC) -> AcceptService:
    return AcceptService(served, NoCommits(), clock, AcceptPolicy("i", 10_000, 30, 0.0),
                         srs=codec)


async def test_rcpt_takes_a_valid_srs_address_and_refuses_forged_and_expired_ones() -> None:
    clock = FakeClock(NOW)
    accept = accept_service(clock)
    address = CODEC.forward("alice@origin.example", "alias.test", NOW)
    resolution = await accept.check_recipient(address.upper(), "")
    assert resolution == Resolution("srs", detail="alice@origin.example")
    forged = address.replace("=alice@", "=mallory@")
    with pytest.raises(InvalidSrsAddress, match="hash") as refused:
        await accept.check_recipient(forged, "")
    assert refused.value.smtp_reply().startswith("550 5.1.7 ")
    clock.advance(22 * DAY)
    with pytest.raises(InvalidSrsAddress, match="expired"):
        await accept.check_recipient(address, "")
    with pytest.raises(InvalidSrsAddress, match="SRS is off"):
        await accept_service(FakeClock(NOW), None).check_recipient(address, "")
    with pytest.raises(UnknownDomain):  # another domain's SRS address is not ours to judge
        await accept.check_recipient(address.replace("alias.test", "else.test"), "")


async def test_a_submission_to_a_forged_srs_address_is_refused() -> None:
    accept = accept_service(FakeClock(NOW))
    forged = CODEC.forward("alice@origin.example", "alias.test", NOW).replace("=alice@", "=m@")
    with pytest.raises(InvalidSrsAddress):
        await accept.submit(Envelope("", (forged,)), b"Subject: x\r\n\r\nbody\r\n")


class NoLists:
    def resolve(self, address: str) -> Resolution:
        return Resolution("unknown_address")

    def active_member_addresses(self, list_id: int) -> list[str]:
        raise AssertionError("no list here")


def test_expansion_relays_a_bounce_to_the_original_sender() -> None:
    srs0 = CODEC.forward("Alice@origin.example", "alias.test", NOW)
    message = InboundMessage("m1", "", (f"<{srs0}>", "nobody@alias.test"), "h", 10, NOW,
                             "", "", "ESMTP")
    ctx = run_process([expand], message, NoLists())
    assert ctx.deliveries == [NewDelivery("m1", RELAYED, "Alice@origin.example", 0)]
    assert [e.kind for e in ctx.events] == ["bounce", "dropped"]


def test_envelope_sender_per_kind() -> None:
    message = InboundMessage("m1", "alice@origin.example", ("x",), "h", 10, NOW, "", "",
                             "ESMTP")
    sender = envelope_sender(message, ALIAS, CODEC, NOW)
    assert sender.startswith("SRS0=") and sender.endswith("=origin.example=alice@alias.test")
    assert envelope_sender(message, TEAM, CODEC, NOW) == "team-bounces@alias.test"
    assert envelope_sender(message, ALIAS, None, NOW) == "info-bounces@alias.test"
    relayed = MailingList(RELAYED, "MAILER-DAEMON@relay.test", ListKind.ALIAS, "", 0, 0.0)
    assert envelope_sender(message, relayed, CODEC, NOW) == ""
    bounce = InboundMessage("m2", "", ("x",), "h", 10, NOW, "", "", "ESMTP")
    assert envelope_sender(bounce, ALIAS, CODEC, NOW) == ""  # a bounce is never bounced


def test_the_secret_made_at_init_is_kept_and_still_checks_after_one_is_set(
        repo: Repository) -> None:
    made = srs_codec(Settings(), repo)
    assert srs_codec(Settings(), repo).secret == made.secret  # stored, not made again
    signed = made.forward("alice@origin.example", "alias.test", NOW)
    configured = srs_codec(Settings(srs_secret="new", srs_old_secrets="a, b"), repo)
    assert configured.secret == "new"
    assert set(configured.old_secrets) == {"a", "b", made.secret}
    assert configured.reverse(signed, NOW) == "alice@origin.example"
