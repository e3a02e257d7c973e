"""Operations end to end: a running relay on SQLite and PostgreSQL, a sink that refuses
on demand, and the ``mailflow trace`` and ``mailflow queue`` commands against its store.
"""

from __future__ import annotations

import json
import smtplib
from collections.abc import Callable

import pytest

from mailflow.testing.factories import make_message
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink


@pytest.fixture(scope="module")
def relay(make_module_relay: Callable[..., RelayProcess]) -> RelayProcess:
    return make_module_relay(poll_interval="0.1").start()


def cli(relay: RelayProcess, *args: str) -> str:
    result = relay.cli(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def post(relay: RelayProcess, address: str) -> str:
    """Send one message to ``address``; its Message-ID."""
    message = make_message(address)
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.sendmail("poster@outside.test", [address], message)
    return message.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()


def test_the_trace_of_a_message_deferred_twice_then_delivered_shows_every_step(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    address, [ann, ben] = relay.fresh_list(members=2)
    module_sink.fail_rcpt(ann, "451 4.2.0 mailbox busy, first", "452 4.2.2 over quota, second")
    header_id = post(relay, address)
    module_sink.wait_for_copies([ann, ben])
    relay.wait_settled()
    [traced] = json.loads(cli(relay, "trace", header_id.strip("<>"), "--json"))
    assert (traced["message_id"], traced["from"], traced["to"], traced["protocol"]) == (
        header_id, "poster@outside.test", [address], "ESMTP")
    steps = [(s["kind"], s["recipient"], s["detail"]) for s in traced["steps"]]
    assert steps[0][0] == "received" and "peer=127.0.0.1" in steps[0][2]
    assert steps[1] == ("expanded", None, f"list {address}: 2 recipient(s)")
    mine = [(kind, detail.split(" ", 2)[:2]) for kind, rcpt, detail in steps[2:]
            if rcpt == ann]
    assert mine == [("deferred", ["451", "4.2.0"]), ("deferred", ["452", "4.2.2"]),
                    ("delivered", ["250", mine[-1][1][1]])]
    assert [kind for kind, rcpt, _ in steps[2:] if rcpt == ben] == ["delivered"]
    assert {(d["recipient"], d["status"], d["attempts"]) for d in traced["deliveries"]} == {
        (ann, "delivered", 3), (ben, "delivered", 1)}
    # The text form: the same steps, by queue id and by recipient.
    text = cli(relay, "trace", ann)
    assert traced["id"] in text and text.count("deferred") == 2
    assert "451 4.2.0 mailbox busy, first" in text


def test_queue_hold_then_delete_asks_for_yes(relay: RelayProcess,
                                             module_sink: SmtpSink) -> None:
    address, members = relay.fresh_list(members=2)
    for member in members:  # deferred again and again: they stay in the queue
        module_sink.fail_rcpt(member, *["451 4.3.0 not now"] * 1000)
    post(relay, address)
    # A delivery on the wire is left alone: hold until both were caught waiting.
    for _ in range(100):
        cli(relay, "queue", "hold", "--list", address)
        shown = json.loads(cli(relay, "queue", "show", "--list", address, "--json"))
        if [d["status"] for d in shown["deliveries"]] == ["held", "held"]:
            break
    else:
        pytest.fail(f"not held: {shown}")
    refused = relay.cli("queue", "delete", "--list", address)
    assert refused.returncode != 0
    assert "this selects 2 deliveries; add --yes to delete them all" in refused.stderr
    assert cli(relay, "queue", "delete", "--status", "held", "--list", address, "--yes") \
        == "deleted 2 deliveries\n"
    with module_sink.handler.lock:
        for member in members:
            module_sink.handler.rcpt_replies.pop(member, None)
    relay.wait_settled()
    rows = json.loads(cli(relay, "queue", "show", "--list", address, "--json"))["deliveries"]
    assert [(d["status"], d["last_reply"]) for d in rows] == [
        ("deleted", "deleted by an operator")] * 2
