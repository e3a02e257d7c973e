"""End to end over real sockets: smtplib -> relay (child process) -> aiosmtpd sink.

Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mailflow import headers
from mailflow.blobs import content_hash
from mailflow.model import ListKind
from mailflow.testing.factories import make_list, make_message
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink

TEAM = ["ann@members.test", "ben@members.test", "cat@members.test"]
NONE = {"queued": 0, "in_flight": 0, "deferred": 0, "delivered": 0, "failed": 0}


def send(relay: RelayProcess, rcpts: list[str], data: bytes,
         sender: str = "poster@outside.test") -> dict:
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        return client.sendmail(sender, rcpts, data)


def queue_json(relay: RelayProcess) -> dict:
    result = relay.cli("queue", "show", "--json", "--limit", "1000")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_list_post_reaches_every_member_with_list_headers(relay: RelayProcess,
                                                          sink: SmtpSink) -> None:
    with relay.repository() as repo:
        make_list(repo, "team@example.test", TEAM, name="Team")
    data = make_message("team@example.test")
    send(relay, ["team@example.test"], data)

    got = sink.wait_for_recipients(3)
    assert sorted(got) == sorted(TEAM)
    for message in sink.messages:
        assert message.mail_from == "team-bounces@example.test"
        header, _ = headers.split_message(message.content)
        assert headers.field_values(header, "List-Id") == ['"Team" <team.example.test>']
        assert len(headers.field_values(header, "X-MailFlow-Loop")) == 1
    # One post to three members is one SMTP transaction, not three.
    assert sink.handler.transactions == 1


def test_alias_forwards_to_external_target_without_list_headers(relay: RelayProcess,
                                                                sink: SmtpSink) -> None:
    with relay.repository() as repo:
        make_list(repo, "owner@example.test", ["someone@elsewhere.test"], kind=ListKind.ALIAS)
    send(relay, ["owner@example.test"], make_message("owner@example.test"))

    assert sink.wait_for_recipients(1) == ["someone@elsewhere.test"]
    header, _ = headers.split_message(sink.messages[0].content)
    assert headers.field_values(header, "List-Id") == []
    assert sink.messages[0].mail_from == "owner-bounces@example.test"


def test_body_and_original_headers_arrive_byte_identical(relay: RelayProcess,
                                                         sink: SmtpSink) -> None:
    with relay.repository() as repo:
        make_list(repo, "team@example.test", TEAM[:1])
    body = (b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n"
            b".leading dot line\r\n..two dots\r\n  trailing spaces   \r\n"
            + "Grüße, ÿ € 𝄞\r\n".encode() + b"x" * 990 + b"\r\n\r\n\r\n--b1--\r\n")
    data = make_message("team@example.test", body=body, extra_headers=[
        "MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="b1"',
        "X-Folded: first\r\n\tsecond line"])
    send(relay, ["team@example.test"], data)

    sink.wait_for_recipients(1)
    arrived = sink.messages[0].content
    assert arrived.endswith(data)  # only header fields were prepended
    assert headers.split_message(arrived)[1] == headers.split_message(data)[1]


def test_incoming_list_headers_are_replaced_not_duplicated(relay: RelayProcess,
                                                           sink: SmtpSink) -> None:
    with relay.repository() as repo:
        make_list(repo, "team@example.test", TEAM[:1])
    data = make_message("team@example.test",
                        extra_headers=["List-Id: <other.list.test>"])
    send(relay, ["team@example.test"], data)
    sink.wait_for_recipients(1)
    header, _ = headers.split_message(sink.messages[0].content)
    assert headers.field_values(header, "List-Id") == ["<team.example.test>"]


@pytest.fixture(scope="module")
def idle_relay(make_module_relay: Callable[..., RelayProcess]) -> RelayProcess:
    """A relay with the list team@, shared by the tests that only get refusals or only
    read: they store and send nothing, so none can see another."""
    relay = make_module_relay().start()
    with relay.repository() as repo:
        make_list(repo, "team@example.test", TEAM)
    return relay


def test_unknown_domain_and_unknown_address_are_refused_at_rcpt(idle_relay: RelayProcess
                                                                ) -> None:
    with smtplib.SMTP("127.0.0.1", idle_relay.smtp_port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("poster@outside.test")
        code, text = client.rcpt("someone@not-ours.test")
        assert (code, text[:5]) == (550, b"5.7.1")
        code, text = client.rcpt("nobody@example.test")
        assert (code, text[:5]) == (550, b"5.1.1")
        code, _ = client.rcpt("team@example.test")
        assert code == 250
    assert sum(idle_relay.counts()[0].values()) == 0


def test_oversized_message_is_refused_with_552(make_relay: Callable[..., RelayProcess],
                                               sink: SmtpSink) -> None:
    relay = make_relay(max_message_size="4096").start()
    with relay.repository() as repo:
        make_list(repo, "team@example.test", TEAM)
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.ehlo("client.test")
        assert client.esmtp_features.get("size") == "4096"
        # Announced size over the limit: refused at MAIL FROM.
        code, text = client.mail("poster@outside.test", ["SIZE=5000"])
        assert (code, text[:5]) == (552, b"5.3.4")
        client.rset()
        # Unannounced: refused after DATA.
        client.mail("poster@outside.test")
        client.rcpt("team@example.test")
        code, text = client.data(make_message("team@example.test",
                                                  body=(b"y" * 70 + b"\r\n") * 70))
        assert (code, text[:5]) == (552, b"5.3.4")
    messages, _ = relay.counts()
    assert sum(messages.values()) == 0


def test_too_many_received_headers_is_a_loop(relay: RelayProcess) -> None:
    with relay.repository() as repo:
        make_list(repo, "team@example.test", TEAM)
    hops = [f"Received: from hop{i}.test by hop{i + 1}.test; Mon, 23 Nov 2026 10:00:00 +0000"
            for i in range(31)]
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(relay, ["team@example.test"], make_message("team@example.test",
                                                        extra_headers=hops))
    assert refused.value.smtp_code == 554
    assert refused.value.smtp_error.startswith(b"5.4.6")
    # Thirty hops are still fine.
    send(relay, ["team@example.test"], make_message("team@example.test",
                                                    extra_headers=hops[:30]))


def test_our_own_copy_coming_back_is_refused_as_a_loop(relay: RelayProcess,
                                                       sink: SmtpSink) -> None:
    with relay.repository() as repo:
        make_list(repo, "team@example.test", ["team@example.test"])  # list is its own member
        make_list(repo, "other@example.test", TEAM[:1])
    send(relay, ["team@example.test"], make_message("team@example.test"))
    sink.wait_for_recipients(1)
    copy = sink.messages[0].content

    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(relay, ["team@example.test"], copy, sender="team-bounces@example.test")
    assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (554, b"5.4.6")
    # SMTP is all or nothing: with a looping recipient, no recipient gets it.
    with pytest.raises(smtplib.SMTPDataError):
        send(relay, ["other@example.test", "team@example.test"], copy)
    # The same copy may still be posted to a different list on its own.
    send(relay, ["other@example.test"], copy)
    assert sink.wait_for_recipients(2)[1:] == [TEAM[0]]
    assert relay.wait_settled() == {**NONE, "delivered": 2}  # nothing else can follow
    assert len(sink.recipients()) == 2


def test_storage_failure_answers_451_and_nothing_is_half_stored(relay: RelayProcess,
                                                                sink: SmtpSink) -> None:
    with relay.repository() as repo:
        make_list(repo, "team@example.test", TEAM[:1])
    blob_dir = relay.data_dir / "blobs"
    moved = blob_dir.with_name("blobs.moved")
    blob_dir.rename(moved)
    blob_dir.write_text("not a directory")  # every blob write now fails
    # Above max_body_in_database (64 KiB), so the body must become a file.
    large = make_message("team@example.test", body=(b"y" * 78 + b"\r\n") * 1000)
    try:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send(relay, ["team@example.test"], large)
        assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (451, b"4.3.0")
        assert sum(relay.counts()[0].values()) == 0
    finally:
        blob_dir.unlink()
        moved.rename(blob_dir)
    # The sender's retry succeeds once storage is back.
    send(relay, ["team@example.test"], large)
    assert sink.wait_for_recipients(1) == TEAM[:1]


def test_small_bodies_are_kept_in_the_database_and_large_ones_in_files(
        relay: RelayProcess, sink: SmtpSink) -> None:
    with relay.repository() as repo:
        make_list(repo, "team@example.test", TEAM[:1])
    small = make_message("team@example.test", body=b"short\r\n")
    large = make_message("team@example.test", body=(b"z" * 78 + b"\r\n") * 1000)
    send(relay, ["team@example.test"], small)
    send(relay, ["team@example.test"], large)
    sink.wait_for_recipients(2)
    assert sorted(headers.split_message(m.content)[1] for m in sink.messages) == sorted(
        [headers.split_message(small)[1], headers.split_message(large)[1]])

    files = [p for p in (relay.data_dir / "blobs").rglob("*") if p.is_file()]
    assert [p.name for p in files] == [content_hash(large)]
    with relay.repository() as repo:
        assert repo.stored_body(content_hash(small)) == small
        assert repo.stored_body(content_hash(large)) is None
        assert repo.blob_stats() == (2, len(small) + len(large))


def test_temporary_failures_are_deferred_then_delivered(relay: RelayProcess,
                                                        sink: SmtpSink) -> None:
    with relay.repository() as repo:
        make_list(repo, "team@example.test", TEAM[:1])
    sink.fail_rcpt(TEAM[0], "451 4.3.0 busy, try later", "452 4.2.2 mailbox full")
    send(relay, ["team@example.test"], make_message("team@example.test"))

    assert sink.wait_for_recipients(1, timeout=30) == TEAM[:1]
    assert relay.wait_settled() == {**NONE, "delivered": 1}
    state = queue_json(relay)  # the CLI's view of a delivery with a history
    assert state["counts"] == {**NONE, "delivered": 1}
    [delivery] = state["deliveries"]
    assert (delivery["recipient"], delivery["status"]) == (TEAM[0], "delivered")
    assert delivery["attempts"] == 3
    assert delivery["last_reply"].startswith("250")


def test_permanent_failure_fails_only_that_recipient(relay: RelayProcess,
                                                     sink: SmtpSink) -> None:
    with relay.repository() as repo:
        make_list(repo, "team@example.test", TEAM)
    sink.fail_rcpt(TEAM[1], "550 5.1.1 no such user")
    send(relay, ["team@example.test"], make_message("team@example.test"))

    assert sorted(sink.wait_for_recipients(2)) == sorted([TEAM[0], TEAM[2]])
    # Settled: every delivery final, so no retry of the 5xx can follow.
    assert relay.wait_settled() == {**NONE, "delivered": 2, "failed": 1}
    with relay.repository() as repo:
        by_rcpt = {d.recipient: d for d in repo.list_deliveries(10)}
    assert by_rcpt[TEAM[1]].status == "failed"
    assert by_rcpt[TEAM[1]].attempts == 1
    assert (by_rcpt[TEAM[1]].last_reply or "").startswith("550")
    assert sink.handler.transactions == 1  # one transaction, and no retry of the 5xx


def test_sigkill_while_delivering_loses_nothing(make_relay: Callable[..., RelayProcess],
                                                sink: SmtpSink) -> None:
    members = [f"m{i:03d}@members.test" for i in range(200)]
    relay = make_relay(delivery_lease="2", smtp_pool_size="2").start()
    with relay.repository() as repo:
        make_list(repo, "big@example.test", members)
    sink.handler.data_delay = 0.5  # a slow next hop keeps deliveries in flight
    send(relay, ["big@example.test"], make_message("big@example.test"))
    sink.wait_for_recipients(1, timeout=20)
    relay.kill()
    assert len(set(sink.recipients())) < len(members)

    sink.handler.data_delay = 0.0
    relay.start()
    # At least once: copies in flight at the kill may arrive twice, none may be missing.
    assert wait_until(lambda: set(sink.recipients()) == set(members), timeout=60)
    assert relay.wait_settled(timeout=30) == {**NONE, "delivered": len(members)}


def test_lmtp_answers_once_per_recipient(make_relay: Callable[..., RelayProcess],
                                         sink: SmtpSink) -> None:
    relay = make_relay(lmtp=True).start()
    with relay.repository() as repo:
        make_list(repo, "team@example.test", TEAM[:1])
        make_list(repo, "loop@example.test", ["loop@example.test"])
    # A copy the relay made for loop@ carries its loop marker for loop@ only.
    send(relay, ["loop@example.test"], make_message("loop@example.test"))
    sink.wait_for_recipients(1)
    looped = sink.messages[0].content

    assert relay.lmtp_port is not None
    with smtplib.LMTP("127.0.0.1", relay.lmtp_port, timeout=30) as client:
        client.ehlo("client.test")  # smtplib's LMTP sends LHLO
        client.mail("poster@outside.test")
        assert client.rcpt("team@example.test")[0] == 250
        assert client.rcpt("loop@example.test")[0] == 250
        assert client.rcpt("nobody@example.test")[0] == 550
        client.putcmd("data")
        assert client.getreply()[0] == 354
        client.send(looped.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        first, second = client.getreply(), client.getreply()
    assert first[0] == 250
    assert (second[0], second[1][:5]) == (554, b"5.4.6")
    assert sink.wait_for_recipients(2)[1] == TEAM[0]


def test_unknown_address_after_restart_and_health_endpoints(idle_relay: RelayProcess) -> None:
    import httpx

    base = f"http://127.0.0.1:{idle_relay.http_port}"
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    metrics = httpx.get(f"{base}/metrics").text
    assert "mailflow_messages_accepted_total" in metrics


def test_sigterm_stops_cleanly_with_idle_clients_connected(relay: RelayProcess) -> None:
    idle = smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30)
    idle.ehlo("lingering.test")
    half_closed = smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30)
    half_closed.sock.shutdown(1)  # type: ignore[union-attr]
    try:
        assert relay.stop(timeout=15) == 0  # exited by itself, not killed
    finally:
        idle.close()
        half_closed.close()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_a_dead_child_process_is_replaced_and_smtp_answers_again(relay: RelayProcess,
                                                                 sink: SmtpSink) -> None:
    with relay.repository() as repo:
        make_list(repo, "team@example.test", TEAM[:1])
    send(relay, ["team@example.test"], make_message("team@example.test"))
    assert sink.wait_for_recipients(1) == TEAM[:1]
    assert relay.process is not None
    [child] = _children(relay.process.pid)  # SMTP sessions and the egress
    os.kill(child, signal.SIGKILL)
    # Connections made while no child runs wait in the listen backlog of the socket the
    # relay keeps; the next child serves them.
    send(relay, ["team@example.test"], make_message("team@example.test", subject="again"))
    assert sink.wait_for_recipients(2) == TEAM[:1] * 2
    assert wait_until(lambda: len(_children(relay.process.pid)) == 1)  # type: ignore[union-attr]
    assert _children(relay.process.pid) != [child]  # type: ignore[union-attr]


def test_listeners_can_run_in_the_relay_process(make_relay: Callable[..., RelayProcess],
                                                sink: SmtpSink) -> None:
    relay = make_relay(listener_process="false").start()
    with relay.repository() as repo:
        make_list(repo, "team@example.test", TEAM)
    send(relay, ["team@example.test"], make_message("team@example.test"))
    assert sorted(sink.wait_for_recipients(3)) == sorted(TEAM)
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(relay, ["nobody@example.test"], make_message("nobody@example.test"))
