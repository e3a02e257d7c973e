"""Filter rules end to end: a running relay (with its child process) on SQLite and
PostgreSQL, rules added with the ``mailflow filter`` command while it runs, SMTP and HTTP
clients, and ``mailflow held`` releasing a held message.

Each test adds rules to lists of its own, so the relay is shared.  Its caches are off
(``recipient_cache_ttl`` 0), so a rule applies to the next message without a wait.
"""

from __future__ import annotations

import email
import json
import smtplib
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import default as default_policy

import httpx
import pytest

from mailflow.services.directory import DirectoryService
from mailflow.testing.factories import make_message
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink

KEY = "filters-key"


@pytest.fixture(scope="module")
def relay(make_module_relay: Callable[..., RelayProcess]) -> RelayProcess:
    return make_module_relay(ingress_psk=KEY, recipient_cache_ttl="0",
                             poll_interval="0.1").start()


def cli(relay: RelayProcess, *args: str) -> str:
    result = relay.cli(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_reject_rule_refuses_after_data_with_its_text_over_smtp_and_http(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    address, members = relay.fresh_list(members=1)
    out = cli(relay, "filter", "add", address, "--body", r"(?i)cheap\s+pills",
              "--action", "reject", "--text", "no pills here")
    assert out == f"added filter rule 1 to {address}: body matches (?i)cheap\\s+pills " \
                  "-> reject\n"
    spam = make_message(address, body=b"Buy CHEAP  pills today.\r\n")
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("poster@outside.test", [address], spam)
        assert (refused.value.smtp_code, refused.value.smtp_error) == (
            550, b"5.7.1 no pills here")
        client.sendmail("poster@outside.test", [address], make_message(address))
    module_sink.wait_for_copies(members)
    response = httpx.post(
        f"http://127.0.0.1:{relay.http_port}/v1/email",
        params=[("from", "poster@outside.test"), ("to", address)], content=spam,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "message/rfc822"},
        timeout=30)
    assert response.status_code == 422
    assert (response.json()["smtp_code"], response.json()["enhanced_status"]) == (550, "5.7.1")
    assert len([m for m in module_sink.messages if members[0] in m.rcpt_tos]) == 1


def test_a_held_message_goes_out_once_released(relay: RelayProcess,
                                               module_sink: SmtpSink) -> None:
    address, members = relay.fresh_list(members=2)
    with relay.repository() as repo:  # (the command itself: the test above)
        DirectoryService(repo).add_filter_rule(address, "hold", header="Subject",
                                               matches="(?i)^moderate", text="needs a look")
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        assert client.sendmail("poster@outside.test", [address],
                               make_message(address, subject="Moderate me")) == {}
    [held] = [m for m in json.loads(cli(relay, "held", "ls", "--json"))
              if m["to"] == [address]]
    assert held["reason"] == (f"{address}: filter rule of {address} (header subject matches "
                              "(?i)^moderate): needs a look")
    with relay.repository() as repo:  # nothing expanded, nothing sent while held
        assert [r for r in repo.list_deliveries(100_000) if r.message_id == held["id"]] == []
    assert cli(relay, "held", "release", held["id"]) == f"released {held['id']}\n"
    module_sink.wait_for_copies(members)
    with relay.repository() as repo:
        assert held["id"] not in {m.id for m in repo.held_messages()}


def test_tag_and_strip_change_the_copies_of_their_list_only(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    address, members = relay.fresh_list(members=2)
    other, other_members = relay.fresh_list(members=1)
    assert cli(relay, "filter", "add", address, "--header", "Subject", "--matches",
               "(?i)urgent", "--action", "tag", "--add-header", "X-Flagged: urgent") == (
        f"added filter rule 1 to {address}: header subject matches (?i)urgent -> tag\n")
    cli(relay, "filter", "add", address, "--attachment", "*.exe", "--action", "strip")
    refused = relay.cli("filter", "add", address, "--body", "x", "--action", "tag",
                        "--add-header", "From: boss@example.test")
    assert refused.returncode == 2 and "cannot add From" in refused.stderr
    exe = b"MZ\x90\x00" + bytes(range(256)) * 8
    with_exe = EmailMessage()
    with_exe["From"], with_exe["To"], with_exe["Subject"] = "ann@outside.test", address, "files"
    with_exe.set_content("See attached.\n")
    with_exe.add_attachment(b"%PDF-1.4 report", maintype="application", subtype="pdf",
                            filename="report.pdf")
    with_exe.add_attachment(exe, maintype="application", subtype="x-msdownload",
                            filename="setup.exe")
    raw = with_exe.as_bytes().replace(b"\n", b"\r\n")
    urgent = make_message(address, subject="URGENT: read", extra_headers=["X-Flagged: no"])
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.sendmail("ann@outside.test", [address, other], raw)
        client.sendmail("ann@outside.test", [address], urgent)
    copies = module_sink.wait_for_copies(members + other_members, count=5)
    stripped = [email.message_from_bytes(m.content, policy=default_policy) for m in copies
                if members[0] in m.rcpt_tos and b"report.pdf" in m.content]
    [copy] = stripped
    assert isinstance(copy, EmailMessage)
    parts = list(copy.iter_parts())
    assert [p.get_filename() for p in parts] == [None, "report.pdf", None]
    assert parts[1].get_payload(decode=True) == b"%PDF-1.4 report"
    assert "setup.exe (application/x-msdownload" in parts[2].get_content()
    [untouched] = [m for m in copies if other_members[0] in m.rcpt_tos]
    assert untouched.content.endswith(raw)  # another list's copy: as received
    [tagged] = [m for m in copies if members[0] in m.rcpt_tos and b"URGENT" in m.content]
    parsed = email.message_from_bytes(tagged.content, policy=default_policy)
    assert parsed.get_all("X-Flagged") == ["urgent"]
