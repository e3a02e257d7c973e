"""DKIM signing without a relay: signatures dkimpy verifies against the key served by a
DNS server on loopback, the key book in front of the store, the keys' validation and
storage on SQLite and PostgreSQL, and the ``mailflow dkim`` commands.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import dkim
import pytest
from click.testing import CliRunner

from mailflow.cli import cli
from mailflow.config import Settings
from mailflow.errors import Conflict, InvalidInput, NotFound
from mailflow.model import DkimKey, ListKind, MailingList
from mailflow.pipeline.send.dkim import (
    CANONICALIZATION,
    dkim_signed,
    relaxed_body,
    relaxed_headers,
    signature_field,
)
from mailflow.services.directory import DirectoryService
from mailflow.services.dkim_keys import DkimKeyBook, new_key
from mailflow.services.installation import initialise
from mailflow.store import Repository, create_cli_engines
from mailflow.testing.clock import FakeClock
from mailflow.testing.dns import DnsServer

DOMAIN = "example.test"
TEAM = MailingList(3, f"team@{DOMAIN}", ListKind.LIST, "Team", 0, 0.0)
COPY = (b"From: Ann <ann@outside.test>\r\nTo: team@example.test\r\nSubject: Hello\r\n"
        b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\nMessage-ID: <m1@outside.test>\r\n"
        b"\r\nHello list.  \r\nSecond line.\r\n")


@pytest.fixture(scope="module")
def key() -> DkimKey:
    return new_key(DOMAIN, "s1", 1_800_000_000.0)


@pytest.fixture(scope="module")
def dns_server(key: DkimKey) -> Iterator[DnsServer]:
    with DnsServer() as server:
        server.add_txt(key.dns_name, key.dns_text)
        yield server


def test_a_signed_copy_verifies_against_the_published_key(key: DkimKey,
                                                          dns_server: DnsServer) -> None:
    signed = dkim_signed(COPY, key)
    assert signed.endswith(COPY)
    assert dkim.verify(signed, dnsfunc=dns_server.txt)
    field = signed[:signed.index(COPY)].decode()
    assert "c=relaxed/relaxed" in field and "d=example.test" in field and "s=s1" in field
    # Relaxed: refolding and trailing whitespace in transit keep it valid; a changed body
    # or Subject does not.
    assert dkim.verify(signed.replace(b"Hello list.  \r\n", b"Hello list.\r\n"),
                       dnsfunc=dns_server.txt)
    assert not dkim.verify(signed.replace(b"Second line", b"Other line"),
                           dnsfunc=dns_server.txt)
    assert not dkim.verify(signed.replace(b"Subject: Hello", b"Subject: Hi"),
                           dnsfunc=dns_server.txt)


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"])
def test_the_signature_is_dkimpys_own(key: DkimKey, newline: bytes) -> None:
    """OpenSSL's RSA on a key loaded once signs exactly what dkimpy's ``dkim.sign`` does
    (its pure-Python RSA, its PEM parse per call): same tags, layout and ``b=``."""
    copy = (b"Received: from a.test\r\n\tby b.test; Mon, 01 Jan 2024 10:00:00 +0000\r\n"
            b"X-Mailer:  Some   Agent \r\nSubject: an\r\n  earlier one\r\n" + COPY
            ).replace(b"\r\n", newline)  # fields it does not sign, and two Subjects
    theirs = dkim.sign(copy, key.selector.encode(), key.domain.encode(),
                       key.private_key.encode(), canonicalize=CANONICALIZATION,
                       linesep=newline)
    stamp = re.search(rb"\bt=(\d+);", theirs)
    assert stamp is not None
    ours = signature_field(copy, key, newline, float(stamp.group(1)))
    assert ours == theirs.replace(b"\r\n", newline)
    assert ours.endswith(newline) and b"b=" in ours


def test_a_copy_without_from_or_with_a_broken_key_goes_out_unsigned(key: DkimKey) -> None:
    no_from = COPY.replace(b"From: Ann <ann@outside.test>\r\n", b"")
    assert dkim_signed(no_from, key) == no_from
    broken = DkimKey(DOMAIN, "s1", "-----BEGIN RSA PRIVATE KEY-----\nxx\n", "", 0.0)
    assert dkim_signed(COPY, broken) == COPY


def test_line_feed_copies_are_signed_in_their_own_line_ending(key: DkimKey,
                                                              dns_server: DnsServer) -> None:
    signed = dkim_signed(COPY.replace(b"\r\n", b"\n"), key)
    assert b"\r" not in signed
    assert dkim.verify(signed, dnsfunc=dns_server.txt)
    assert dkim.verify(signed.replace(b"\n", b"\r\n"), dnsfunc=dns_server.txt)  # on the wire


def test_another_key_under_the_same_name_does_not_verify(key: DkimKey) -> None:
    other = new_key(DOMAIN, "s1", 0.0)
    with DnsServer() as server:
        server.add_txt(other.dns_name, other.dns_text)
        assert not dkim.verify(dkim_signed(COPY, key), dnsfunc=server.txt)


def test_a_copy_dkimpy_cannot_read_goes_out_unsigned(key: DkimKey) -> None:
    broken = b"no header section at all"
    assert dkim_signed(broken, key) == broken


def test_the_book_gives_a_domains_signer_and_asks_the_store_once_per_ttl(
        key: DkimKey, dns_server: DnsServer) -> None:
    asked: list[str] = []

    async def fetch(domain: str) -> DkimKey | None:
        asked.append(domain)
        return key if domain == DOMAIN else None

    clock = FakeClock(0.0)
    book = DkimKeyBook(fetch, clock, ttl=2.0)
    other = MailingList(4, "info@other.test", ListKind.ALIAS, "", 0, 0.0)

    async def scenario() -> list[Callable[[bytes], bytes] | None]:
        signers = [await book.signer(TEAM), await book.signer(TEAM), await book.signer(other)]
        clock.advance(2.5)
        signers.append(await book.signer(TEAM))
        return signers

    first, second, unsigned, later = asyncio.run(scenario())
    assert asked == [DOMAIN, "other.test", DOMAIN]
    assert unsigned is None
    for signer in (first, second, later):
        assert signer is not None
        signed = signer(COPY)
        assert signed.startswith(b"DKIM-Signature:") and signed.endswith(COPY)
        assert dkim.verify(signed, dnsfunc=dns_server.txt)


def test_keys_are_made_for_served_domains_stored_and_replaced(repo: Repository) -> None:
    directory = DirectoryService(repo, FakeClock(1_800_000_000.0))
    with pytest.raises(NotFound):
        directory.create_dkim_key(DOMAIN)
    directory.add_domain(DOMAIN)
    with pytest.raises(InvalidInput, match="invalid selector"):
        directory.create_dkim_key(DOMAIN, "bad_selector!")
    made = directory.create_dkim_key(DOMAIN.upper())
    assert (made.domain, made.selector) == (DOMAIN, "mf20270115")
    assert repo.dkim_key(DOMAIN) == made
    with pytest.raises(Conflict, match="selector mf20270115"):
        directory.create_dkim_key(DOMAIN, "s2")
    replaced = directory.create_dkim_key(DOMAIN, "S2", replace=True)
    assert replaced.selector == "s2" and replaced.private_key != made.private_key
    assert directory.dkim_keys() == [replaced]
    directory.remove_dkim_key(DOMAIN)
    assert repo.dkim_key(DOMAIN) is None
    with pytest.raises(NotFound):
        directory.remove_dkim_key(DOMAIN)
    directory.create_dkim_key(DOMAIN, "s3")
    directory.remove_domain(DOMAIN)  # takes its key along
    assert repo.dkim_keys() == []


def test_the_dkim_commands(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, hostname="relay.test")
    initialise(settings)
    engines = create_cli_engines(settings.resolved_database_url)
    try:
        Repository(engines).add_domain(DOMAIN, 0.0)
    finally:
        engines.dispose()
    runner = CliRunner(env={"MAILFLOW_DATA_DIR": str(tmp_path), "MAILFLOW_CONFIG": ""})

    def run(*args: str) -> str:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    made = run("dkim", "keygen", DOMAIN, "--selector", "s1").splitlines()
    assert made[0] == (f"created a DKIM key for {DOMAIN} (selector s1); copies are signed "
                       "from now on; publish this DNS record:")
    assert made[1].startswith(f's1._domainkey.{DOMAIN}. IN TXT ( "v=DKIM1; k=rsa; p=MII')
    [listed] = json.loads(run("dkim", "ls", "--json"))
    assert (listed["domain"], listed["selector"], listed["dns_name"]) == (
        DOMAIN, "s1", f"s1._domainkey.{DOMAIN}")
    # The record as printed is what a zone file holds: its strings joined, the value.
    strings = made[1].split("( ", 1)[1].rsplit(" )", 1)[0]
    assert "".join(s.strip('"') for s in strings.split('" "')) == listed["dns_txt"]
    assert all(len(s.strip('"')) <= 255 for s in strings.split(" "))
    with pytest.raises(Conflict):  # (the exit status goes through ``main``: test_cli)
        runner.invoke(cli, ["dkim", "keygen", DOMAIN], catch_exceptions=False)
    assert run("dkim", "remove", DOMAIN) == f"removed the DKIM key of {DOMAIN} (selector s1)\n"
    assert run("dkim", "ls") == ""


def test_the_relaxed_canonicalization_is_dkimpys() -> None:
    """Ours (the fast one the signer uses) gives dkimpy's bytes for every mix of blanks,
    line breaks and blank lines: a tricky set, then 20,000 random texts."""
    from dkim.canonicalization import Relaxed

    tricky = [b"", b"\r\n", b"\r\n\r\n", b"a", b"a\r\n", b"a\r\n\r\n\r\n", b"a \t \r\n",
              b"\ta\t\tb  c \r\n \r\n\t\r\n", b"a\rb\r\n", b"a\nb", b" \r\n", b"x  \r\r\n\n"]
    pieces = [b"a", b" ", b"\t", b"\r\n", b"\r", b"\n", b"  ", b"x y"]
    rnd = random.Random(8058)
    texts = tricky + [b"".join(rnd.choice(pieces) for _ in range(rnd.randrange(12)))
                      for _ in range(20_000)]
    for text in texts:
        assert relaxed_body(text) == Relaxed.canonicalize_body(text), text
        fields = [(b"Subject \t", text), (b"X-Folded", b" one\r\n\ttwo " + text)]
        assert relaxed_headers(fields) == Relaxed.canonicalize_headers(fields), text
