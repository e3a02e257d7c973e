"""Addresses and domains in one form: what the CLI stores is what every ingress looks up."""

from __future__ import annotations

import re

import pytest

from mailflow import addresses
from mailflow.errors import InvalidInput

A_LABEL = "xn--ncode-cta3g.example"

# One domain written as a user or an SMTPUTF8 client may write it: U-labels, upper case,
# decomposed (NFD) accents, the ideographic full stop UTS #46 maps to ".", and A-labels.
SPELLINGS = ["ünïcode.example", "ÜNÏCODE.EXAMPLE", "u\u0308ni\u0308code.example",
             "ünïcode\u3002example", "ünïcode.example", A_LABEL, A_LABEL.upper()]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_of_an_idn_is_stored_and_looked_up_as_its_a_labels(spelling: str
                                                                          ) -> None:
    assert addresses.validated_domain(spelling) == A_LABEL               # domain add
    assert addresses.validated(f"Team@{spelling}") == f"team@{A_LABEL}"  # list create
    assert addresses.canonical(f"<Team@{spelling}>") == f"team@{A_LABEL}"  # RCPT, HTTP, pipe
    assert addresses.split(f"team@{spelling}") == ("team", A_LABEL)
    assert addresses.domain_problem(addresses.canonical(f"x@{spelling}")) is None


def test_a_non_ascii_local_part_is_kept_in_nfc_with_the_domain_as_a_labels() -> None:
    stored = addresses.validated("Ünï@ünïcode.example")
    assert stored == f"ünï@{A_LABEL}"
    assert addresses.canonical("U\u0308ni\u0308@ÜNÏCODE.example") == stored


@pytest.mark.parametrize(("domain", "reason"), [
    ("a\u200db.example", "Joiner U+200D not allowed"),
    ("ü" * 64 + ".example", "too long"),
    ("xn--zz.example", "A-label"),
    ("\u2603.example", "U+2603"),  # a symbol: valid in IDNA 2003, not in 2008
])
def test_an_invalid_idn_is_refused_with_the_reason(domain: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(f"invalid domain {domain!r}: ") + ".*"
                       + re.escape(reason)):
        addresses.validated_domain(domain)
    with pytest.raises(InvalidInput, match="invalid address"):
        addresses.validated(f"x@{domain}")
    # An envelope address is never refused by canonical() itself (RCPT must answer):
    # it is left as it came, lower case, and domain_problem() says why no relay has it.
    assert addresses.canonical(f"x@{domain}") == f"x@{domain.lower()}"
    assert reason in (addresses.domain_problem(addresses.canonical(f"x@{domain}")) or "")


def test_ascii_addresses_are_only_lower_cased() -> None:
    assert addresses.canonical(" <Ann@Example.TEST> ") == "ann@example.test"
    assert addresses.canonical("Postmaster") == "postmaster"
    assert addresses.domain_problem("ann@example.test") is None
    assert addresses.domain_problem("postmaster") is None
    assert addresses.canonical("\udcff@example.test") == "\udcff@example.test"  # no raise


def test_an_address_without_a_domain_has_the_null_sender_as_bounces_address() -> None:
    assert addresses.bounces_address("team@example.test") == "team-bounces@example.test"
    assert addresses.bounces_address("postmaster") == ""


@pytest.mark.parametrize("text", [
    "A.b@Example.test", "a+tag@example.test", "a!#$%&'*/=?^_`{|}~-@example.test",
    "a..b@example.test", ".a@example.test", "a.@example.test", '"q"@example.test',
    "a@b@example.test", "x" * 64 + "@example.test", "x" * 65 + "@example.test",
    "ü@example.test", "a b@example.test"])
def test_a_known_domain_answers_as_email_validator_does(text: str) -> None:
    """The shortcut for a domain validated before (a member file's thousands of
    addresses in a few domains) accepts and refuses exactly what the full check does."""
    def outcome() -> str:
        try:
            return addresses.validated(text)
        except InvalidInput:
            return "invalid"

    addresses._known_domains.clear()
    cold = outcome()
    addresses.validated("warm@example.test")
    assert "example.test" in addresses._known_domains
    assert outcome() == cold
