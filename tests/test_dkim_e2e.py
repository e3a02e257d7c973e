"""DKIM end to end: a running relay (SQLite and PostgreSQL) with a key made by
``mailflow dkim keygen``, posts over SMTP, copies at the sink verified by dkimpy against
the record a DNS server on loopback serves.
"""

from __future__ import annotations

import json
import re
import smtplib
from collections.abc import Callable, Iterator

import dkim
import pytest

from mailflow.testing.dns import DnsServer
from mailflow.testing.factories import make_message
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink


@pytest.fixture(scope="module")
def relay(make_module_relay: Callable[..., RelayProcess]) -> RelayProcess:
    # One recipient per transaction: a post to a list is several sends of one variant.
    return make_module_relay(recipient_cache_ttl="0", poll_interval="0.1",
                             max_recipients_per_transaction="1").start()


@pytest.fixture(scope="module")
def dns_server(relay: RelayProcess) -> Iterator[DnsServer]:
    relay.fresh_list(members=1)  # (the domain comes with the first list)
    made = relay.cli("dkim", "keygen", "example.test", "--selector", "e2e")
    assert made.returncode == 0, made.stderr
    [key] = json.loads(relay.cli("dkim", "ls", "--json").stdout)
    with DnsServer() as server:
        server.add_txt(key["dns_name"], key["dns_txt"])
        yield server


def test_every_copy_is_signed_once_per_variant_and_verifies(
        relay: RelayProcess, module_sink: SmtpSink, dns_server: DnsServer) -> None:
    address, members = relay.fresh_list(members=3)
    tagged = relay.cli("filter", "add", address, "--header", "Subject", "--matches", "(?i)hello",
                       "--action", "tag", "--add-header", "X-Flagged: yes")
    assert tagged.returncode == 0, tagged.stderr
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.sendmail("ann@outside.test", [address], make_message(address))
    copies = module_sink.wait_for_copies(members)
    assert len({m.rcpt_tos for m in copies}) == 3  # three transactions
    signatures = set()
    for copy in copies:
        assert dkim.verify(copy.content, dnsfunc=dns_server.txt), copy.content[:600]
        field = copy.content.split(b"\r\n\r\n", 1)[0].split(b"\r\nX-Flagged", 1)[0]
        assert field.startswith(b"DKIM-Signature: ")  # first: added last, over the rest
        signatures.add(field)
        signed_fields = re.search(rb"h=([^;]*);", field.replace(b"\r\n", b""))
        assert signed_fields is not None and b"list-id" in signed_fields.group(1)
        assert b"\r\nX-Flagged: yes\r\n" in copy.content  # the chain ran before
    assert len(signatures) == 1  # one signature for the rendering variant, not per copy
    assert dns_server.questions > 0


def test_a_domain_without_a_key_is_not_signed(relay: RelayProcess, module_sink: SmtpSink,
                                              dns_server: DnsServer) -> None:
    removed = relay.cli("dkim", "remove", "example.test")
    assert removed.returncode == 0, removed.stderr
    try:
        address, members = relay.fresh_list(members=1)
        with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
            client.sendmail("ann@outside.test", [address], make_message(address))
        [copy] = module_sink.wait_for_copies(members)
        assert b"DKIM-Signature" not in copy.content
    finally:
        relay.cli("dkim", "keygen", "example.test", "--selector", "e2e")
