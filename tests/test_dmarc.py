"""DMARC-safe From (issue 12, part 6): the send step without a process, the policy
lookup against a DNS server on loopback, and a list end to end over SMTP."""

from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib
from collections.abc import Callable, Iterator

import pytest

from mailflow.model import AuthorField, DmarcMode, InboundMessage, ListKind, MailingList
from mailflow.pipeline.chain import render_copy
from mailflow.pipeline.context import Identity
from mailflow.services.dmarc_policy import DmarcPolicies, parse_policy
from mailflow.testing.clock import FakeClock
from mailflow.testing.dns import DnsServer, dns_server
from mailflow.testing.factories import make_message
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink

IDENTITY = Identity("abc", "relay.test")
TEAM = MailingList(3, "team@example.test", ListKind.LIST, "Team", 0, 0.0,
                   dmarc=DmarcMode.AUTO)
POST = (b"From: Ann Example <ann@strict.example>\r\nTo: team@example.test\r\n"
        b"Subject: hello\r\nMessage-ID: <p1@strict.example>\r\n\r\nHi all.\r\n")


def inbound() -> InboundMessage:
    return InboundMessage("q1", "ann@strict.example", ("team@example.test",), "h", 0,
                          1_800_000_000.0, "127.0.0.1", "client.test", "ESMTP")


def rendered(raw: bytes, field: AuthorField | None,
             mailing_list: MailingList = TEAM) -> email.message.EmailMessage:
    copy = render_copy(raw, inbound(), mailing_list, IDENTITY, rewrite_from=field)
    parsed = email.message_from_bytes(copy, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    assert parsed.defects == []
    return parsed


# -- the send step ----------------------------------------------------------------------

def test_the_list_takes_from_and_the_author_goes_to_reply_to() -> None:
    out = rendered(POST, AuthorField.REPLY_TO)
    assert out.get_all("From") == ["Ann Example via Team <team@example.test>"]
    assert out.get_all("Reply-To") == ["Ann Example <ann@strict.example>"]
    assert out["Subject"] == "hello" and out.get_content() == "Hi all.\r\n"


def test_the_author_can_go_to_cc_instead_next_to_those_already_there() -> None:
    raw = POST.replace(b"Subject:", b"Cc: Bob <bob@x.test>\r\nSubject:")
    out = rendered(raw, AuthorField.CC)
    assert out["From"].addresses[0].addr_spec == "team@example.test"
    assert [a.addr_spec for a in out["Cc"].addresses] == ["bob@x.test", "ann@strict.example"]
    assert out["Reply-To"] is None


def test_an_existing_reply_to_is_kept_and_the_author_added_once() -> None:
    raw = POST.replace(b"Subject:", b"Reply-To: desk@strict.example\r\nSubject:")
    out = rendered(raw, AuthorField.REPLY_TO)
    assert [a.addr_spec for a in out["Reply-To"].addresses] == [
        "desk@strict.example", "ann@strict.example"]
    raw = POST.replace(b"Subject:", b"Reply-To: ANN@strict.example\r\nSubject:")
    assert len(rendered(raw, AuthorField.REPLY_TO).get_all("Reply-To")) == 1


def test_an_encoded_name_stays_readable_and_nothing_unsafe_reaches_a_field() -> None:
    raw = POST.replace(b"Ann Example", b"=?utf-8?q?Zo=C3=AB_M=C3=BCller?=")
    out = rendered(raw, AuthorField.REPLY_TO)
    assert out["From"].addresses[0].display_name == "Zoë Müller via Team"
    assert out["Reply-To"].addresses[0].display_name == "Zoë Müller"
    # A name that decodes to a line break does not start a new field.
    raw = POST.replace(b"Ann Example", b"=?utf-8?q?Ann=0D=0ABcc=3A_x=40evil.test?=")
    out = rendered(raw, AuthorField.REPLY_TO)
    assert out["Bcc"] is None
    assert len(out.get_all("From")) == 1


def test_no_decision_or_no_plain_author_leaves_from_alone() -> None:
    assert rendered(POST, None)["From"] == "Ann Example <ann@strict.example>"
    raw = POST.replace(b"<ann@strict.example>", b"<undisclosed>")
    assert "team@example.test" not in rendered(raw, AuthorField.REPLY_TO)["From"]


# -- the policy lookup --------------------------------------------------------------------

def test_parse_policy() -> None:
    assert parse_policy("v=DMARC1; p=reject; rua=mailto:a@b") == "reject"
    assert parse_policy("v=DMARC1;p=Quarantine") == "quarantine"
    assert parse_policy("v=spf1 -all") is None
    assert parse_policy("p=reject; v=DMARC1") is None  # v= must come first


RECORDS = {
    "_dmarc.strict.example": ["v=DMARC1; p=reject"],
    "_dmarc.careful.example": ["v=DMARC1; p=quarantine; pct=100"],
    "_dmarc.relaxed.example": ["v=DMARC1; p=none"],
    "_dmarc.twice.example": ["v=DMARC1; p=reject", "v=DMARC1; p=none"],
    "_dmarc.spf.example": ["v=spf1 -all"],
}


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with dns_server(RECORDS, ttl=300) as server:
        server.silent.add("_dmarc.down.example")
        yield server


def ask(policies: DmarcPolicies, *authors: str) -> list[bool]:
    async def run() -> list[bool]:
        return [await policies.requires_rewrite(a) for a in authors]
    return asyncio.run(run())


def test_strict_policies_require_a_rewrite_others_do_not(dns: DnsServer) -> None:
    policies = DmarcPolicies(f"127.0.0.1:{dns.port}", timeout=2)
    assert ask(policies, "a@strict.example", "a@careful.example", "a@relaxed.example",
               "a@nothing.example", "a@twice.example", "a@spf.example") == [
        True, True, False, False, False, False]


def test_a_subdomain_without_a_record_follows_its_organizational_domain(
        dns: DnsServer) -> None:
    policies = DmarcPolicies(f"127.0.0.1:{dns.port}", timeout=2)
    assert ask(policies, "a@mail.strict.example", "a@mail.relaxed.example") == [True, False]
    assert "_dmarc.strict.example" in dns.asked


def test_answers_are_kept_for_their_ttl(dns: DnsServer) -> None:
    clock = FakeClock(1000.0)
    policies = DmarcPolicies(f"127.0.0.1:{dns.port}", timeout=2, clock=clock.now)
    assert ask(policies, "a@strict.example", "b@strict.example") == [True, True]
    assert dns.asked.count("_dmarc.strict.example") == 1
    clock.advance(301)
    assert ask(policies, "c@strict.example") == [True]
    assert dns.asked.count("_dmarc.strict.example") == 2


def test_a_resolver_that_does_not_answer_means_rewrite_and_ask_again_soon(
        dns: DnsServer) -> None:
    clock = FakeClock(1000.0)
    policies = DmarcPolicies(f"127.0.0.1:{dns.port}", timeout=0.3, clock=clock.now)
    assert ask(policies, "a@down.example") == [True]
    asked = dns.asked.count("_dmarc.down.example")
    clock.advance(61)
    dns.silent.clear()
    assert ask(policies, "a@down.example") == [False]
    assert dns.asked.count("_dmarc.down.example") > asked


def test_the_cache_is_bounded(dns: DnsServer) -> None:
    policies = DmarcPolicies(f"127.0.0.1:{dns.port}", timeout=2, max_entries=2)
    ask(policies, "a@strict.example", "a@relaxed.example", "a@careful.example")
    assert len(policies._cache) == 2


# -- end to end -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def module_dns() -> Iterator[DnsServer]:
    with dns_server(RECORDS) as server:
        yield server


def test_an_auto_list_rewrites_for_a_reject_domain_and_not_for_a_none_domain(
        make_module_relay: Callable[..., RelayProcess], module_sink: SmtpSink,
        module_dns: DnsServer) -> None:
    relay = make_module_relay(dns_resolver=f"127.0.0.1:{module_dns.port}").start()
    address, members = relay.fresh_list(members=2, name="Team")
    relay.cli("list", "update", address, "--dmarc", "auto")
    senders = ("ann@strict.example", "bob@relaxed.example")
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        for sender in senders:
            client.sendmail(sender, [address], make_message(address, sender=sender))
    copies = module_sink.wait_for_copies(members, count=4)
    by_sender: dict[str, list[email.message.EmailMessage]] = {}
    reached: dict[str, set[str]] = {}
    for copy in copies:
        parsed = email.message_from_bytes(copy.content, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        author = (parsed["Reply-To"] or parsed["From"]).addresses[0].addr_spec
        by_sender.setdefault(author, []).append(parsed)
        reached.setdefault(author, set()).update(copy.rcpt_tos)
    for parsed in by_sender["ann@strict.example"]:
        assert parsed["From"].addresses[0].addr_spec == address
        assert "via Team" in parsed["From"].addresses[0].display_name
    for parsed in by_sender["bob@relaxed.example"]:
        assert parsed["From"].addresses[0].addr_spec == "bob@relaxed.example"
        assert parsed["Reply-To"] is None
    assert reached == {sender: set(members) for sender in senders}


def test_the_cli_refuses_an_unknown_mode(make_module_relay: Callable[..., RelayProcess]
                                         ) -> None:
    relay = make_module_relay()
    address, _ = relay.fresh_list(members=1)
    result = relay.cli("list", "update", address, "--dmarc", "sometimes")
    assert result.returncode != 0
    assert "sometimes" in result.stderr
    shown = relay.cli("list", "show", address, "--json")
    assert '"dmarc": "never"' in shown.stdout


def test_a_list_that_sets_reply_to_keeps_it_and_the_author_goes_to_cc() -> None:
    from dataclasses import replace

    from mailflow.model import Decoration, ReplyTo

    team = replace(TEAM, decoration=Decoration(reply_to=ReplyTo.LIST.value))
    out = rendered(POST, AuthorField.REPLY_TO, team)
    assert [a.addr_spec for a in out["Reply-To"].addresses] == ["team@example.test"]
    assert [a.addr_spec for a in out["Cc"].addresses] == ["ann@strict.example"]
    assert out["From"].addresses[0].addr_spec == "team@example.test"
