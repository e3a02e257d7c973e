"""Sender block and allow entries end to end: a running relay (with its child process)
on SQLite and PostgreSQL, entries added while it runs, SMTP and HTTP clients.

Each test blocks a sender of its own for lists of its own, so the relay is shared.
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable

import httpx
import pytest

from mailflow.services.directory import DirectoryService
from mailflow.testing.factories import make_message
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink

KEY = "blocklist-key"
TTL = 0.3  # recipient_cache_ttl: how long a relay may act on entries it read before


@pytest.fixture(scope="module")
def relay(make_module_relay: Callable[..., RelayProcess]) -> RelayProcess:
    return make_module_relay(ingress_psk=KEY, recipient_cache_ttl=str(TTL)).start()


def rcpt_reply(relay: RelayProcess, sender: str, recipient: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail(sender)
        return client.rcpt(recipient)


def test_a_block_added_while_running_refuses_the_sender_at_rcpt(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    blocking, blocked_members = relay.fresh_list(members=2)
    open_list, open_members = relay.fresh_list(members=1)
    assert rcpt_reply(relay, "x@spam.example", blocking)[0] == 250
    added = relay.cli("block", "add", "*@SPAM.example", "--for", blocking)
    assert added.returncode == 0, added.stderr
    with relay.repository() as repo:
        DirectoryService(repo).add_sender_rule("allow", "friend@spam.example", blocking)
    # The relay and its child may answer from what they remembered for a moment
    # (recipient_cache_ttl, twice over for the child's RCPT answers; docs/rules.md).
    deadline = time.monotonic() + 10 * TTL + 5
    while (reply := rcpt_reply(relay, "x@spam.example", blocking))[0] == 250:
        assert time.monotonic() < deadline, "the block never took effect"
        time.sleep(TTL / 3)
    assert reply == (550, f"5.7.1 sender <x@spam.example> is blocked for <{blocking}>".encode())
    assert rcpt_reply(relay, "friend@spam.example", blocking)[0] == 250  # allow-listed

    # One transaction to both lists: the blocked list is refused at its RCPT, the other
    # gets the message.
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        refused = client.sendmail("x@spam.example", [blocking, open_list],
                                  make_message(open_list, sender="x@spam.example"))
    assert list(refused) == [blocking] and refused[blocking][0] == 550
    module_sink.wait_for_copies(open_members)
    with relay.repository() as repo:
        rows = repo.list_deliveries(100_000)
    assert {r.recipient for r in rows} & set(blocked_members) == set()


def test_http_refuses_with_422_or_drops_the_blocked_recipients_with_an_event(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    blocking, blocked_members = relay.fresh_list(members=1)
    open_list, open_members = relay.fresh_list(members=1)
    with relay.repository() as repo:
        DirectoryService(repo).add_sender_rule("block", "news@example.*", blocking)

    def post(*rcpts: str) -> httpx.Response:
        return httpx.post(
            f"http://127.0.0.1:{relay.http_port}/v1/email",
            params=[("from", "News@Example.org"), *(("to", r) for r in rcpts)],
            content=make_message(rcpts[0], sender="news@example.org"),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "message/rfc822"},
            timeout=30)

    refused = post(blocking)
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert (problem["smtp_code"], problem["enhanced_status"], problem["detail"]) == (
        550, "5.7.1", f"sender <news@example.org> is blocked for <{blocking}>")

    taken = post(blocking, open_list)
    assert taken.status_code == 202
    message_id = taken.json()["message_id"]
    module_sink.wait_for_copies(open_members)
    with relay.repository() as repo:
        trace = repo.message_events(message_id)
        rows = [r for r in repo.list_deliveries(100_000) if r.message_id == message_id]
    assert [r.recipient for r in rows] == open_members  # none for the blocked list
    [(kind, detail)] = [(kind, detail) for _, kind, detail in trace if kind != "received"
                        and kind != "expanded"]
    assert kind == "discarded" and detail == (
        f"{blocking}: sender <news@example.org> blocked by the block entry news@example.* "
        f"for {blocking}")
    assert blocked_members[0] not in module_sink.recipients()
