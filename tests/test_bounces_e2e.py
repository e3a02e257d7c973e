"""Personalization, VERP and bounce processing end to end, on SQLite and PostgreSQL: a
running relay, the ``mailflow`` command, an SMTP client and a sink.

A personalized list sends each member a copy of its own whose envelope sender names
the member (``LIST-bounces+TOKEN@d``); a bounce sent back to that address over SMTP
raises that member's score, and a suppressed member gets nothing.
"""

from __future__ import annotations

import json
import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest

from mailflow.model import ListKind
from mailflow.testing.factories import make_message
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink

BOUNCE = (Path(__file__).parent / "data" / "bounces" / "dsn_delayed.eml").read_bytes().replace(
    b"\n", b"\r\n")


@pytest.fixture(scope="module")
def relay(make_module_relay: Callable[..., RelayProcess]) -> RelayProcess:
    return make_module_relay(recipient_cache_ttl="0", poll_interval="0.1").start()


def cli(relay: RelayProcess, *args: str) -> str:
    result = relay.cli(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def roster(relay: RelayProcess, address: str) -> dict[str, dict[str, object]]:
    return {m["address"]: m for m in json.loads(cli(relay, "member", "list", address,
                                                    "--json"))}


def test_verp_round_trip_a_bounce_to_a_members_sender_raises_its_score(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    address, members = relay.fresh_list(members=3)
    assert cli(relay, "list", "update", address, "--personalize", "on") == \
        f"updated list {address}\n"
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.sendmail("poster@outside.test", [address], make_message(address))
    copies = module_sink.wait_for_copies(members)
    assert sorted(r for m in copies for r in m.rcpt_tos) == sorted(members)
    assert all(len(m.rcpt_tos) == 1 for m in copies)  # one copy per member
    senders = {m.rcpt_tos[0]: m.mail_from for m in copies}
    local, domain = address.split("@")
    assert all(s.startswith(f"{local}-bounces+") and s.endswith(f"@{domain}")
               for s in senders.values())
    assert len(set(senders.values())) == len(members)

    # The bounce comes back to the first member's address, in another case: the
    # message itself names someone else (a delay for carol), the token decides.
    verp_address = senders[members[0]].upper()
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.sendmail("", [verp_address], BOUNCE)
    relay.wait_settled()
    scores = {a: m["bounce_score"] for a, m in roster(relay, address).items()}
    assert scores == {members[0]: 0.5, members[1]: 0.0, members[2]: 0.0}
    assert roster(relay, address)[members[0]]["last_bounce_at"] is not None
    [event] = json.loads(cli(relay, "bounces", "ls", "--list", address, "--json"))
    assert (event["address"], event["kind"], event["source"], event["counted"]) == (
        members[0], "temporary", "verp", True)



def test_a_suppressed_member_gets_no_copy(relay: RelayProcess, module_sink: SmtpSink) -> None:
    address, members = relay.fresh_list(members=2)
    assert cli(relay, "suppress", "add", members[1], "--list", address) == \
        f"suppressed {members[1]} for {address}\n"
    [entry] = [e for e in json.loads(cli(relay, "suppress", "ls", "--json"))
               if e["address"] == members[1]]
    assert entry["list"] == address
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.sendmail("poster@outside.test", [address], make_message(address))
    module_sink.wait_for_copies(members[:1])
    relay.wait_settled()
    assert not [m for m in module_sink.messages if members[1] in m.rcpt_tos]
    missing = relay.cli("suppress", "remove", members[0], "--list", address)
    assert missing.returncode != 0
    assert missing.stderr.strip() == (f"mailflow: error: <{members[0]}> is not suppressed for "
                                      f"{address}; "
                                      "see `mailflow suppress ls`")


def test_list_settings_of_personalization_and_bounces(relay: RelayProcess) -> None:
    address, members = relay.fresh_list(members=1)
    cli(relay, "list", "update", address, "--personalize", "on", "--bounce-threshold", "3")
    shown = json.loads(cli(relay, "list", "show", address, "--json"))
    assert (shown["personalize"], shown["bounce_threshold"]) == (True, 3.0)
    bad = relay.cli("list", "update", address, "--bounce-threshold", "0")
    assert (bad.returncode, bad.stderr.strip()) == (
        2, "mailflow: error: invalid bounce threshold 0: from 0.5 to 1000")
    assert cli(relay, "member", "enable", address, *members) == \
        f"enabled 0 member(s) of {address}\n"  # active already
    alias, _ = relay.fresh_list(members=1, kind=ListKind.ALIAS)
    refused = relay.cli("list", "update", alias, "--personalize", "on")
    assert refused.returncode == 2
    assert "is not a list: personalization and the bounce threshold" in refused.stderr


def test_a_bounce_piped_in_decodes_its_verp_token(relay: RelayProcess,
                                                  module_sink: SmtpSink) -> None:
    """``mailflow pipe`` (Postfix's pipe transport) reads VERP tokens as the relay does."""
    address, members = relay.fresh_list(members=2)
    cli(relay, "list", "update", address, "--personalize", "on")
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.sendmail("poster@outside.test", [address], make_message(address))
    senders = {m.rcpt_tos[0]: m.mail_from for m in module_sink.wait_for_copies(members)}
    failed = (Path(__file__).parent / "data" / "bounces" / "exim.eml").read_bytes()
    piped = relay.cli("pipe", "--to", senders[members[1]], input=failed)
    assert piped.returncode == 0, piped.stderr
    relay.wait_settled()
    scores = {a: m["bounce_score"] for a, m in roster(relay, address).items()}
    assert scores == {members[0]: 0.0, members[1]: 1.0}
