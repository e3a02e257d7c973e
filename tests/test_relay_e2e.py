"""End to end over real sockets: smtplib -> relay (child process) -> aiosmtpd sink.

Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import itertools
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
from mailflow.model import DeliveryRow, ListKind
from mailflow.services.directory import DirectoryService
from mailflow.testing.factories import make_list, make_message
from mailflow.testing.ports import descendants
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink

TEAM = ["ann@members.test", "ben@members.test", "cat@members.test"]
_RELAYS = itertools.count()
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


@pytest.fixture(scope="module")
def shared(make_module_relay: Callable[..., RelayProcess]) -> RelayProcess:
    """One relay (per backend) for the tests that need no settings, fault or state of
    their own.  Each posts to a list of its own (:meth:`RelayProcess.fresh_list`) with
    members of its own and looks only at their copies, so none can see another's mail."""
    number = next(_RELAYS)  # the backends' relays share one sink: addresses of their own
    relay = make_module_relay(postmaster_address=f"ops{number}@operator.test",
                              abuse_address=f"abuse{number}@operator.test").start()
    with relay.repository() as repo:
        make_list(repo, "team@example.test", TEAM)  # for refusals at RCPT
    return relay


def wait_final(relay: RelayProcess, recipients: list[str], timeout: float = 30.0
               ) -> dict[str, DeliveryRow]:
    """Wait until the relay holds a final delivery (delivered or failed) for each of
    ``recipients`` and nothing pending for any; returns them by recipient.

    From then on no further copy for them can leave the relay: the proof that something
    did not happen, without sleeping, and without looking at other tests' mail.
    """
    mine = set(recipients)
    deadline = time.monotonic() + timeout
    while True:
        with relay.repository() as repo:
            rows = [r for r in repo.list_deliveries(100_000) if r.recipient in mine]
        if {r.recipient for r in rows} == mine and all(
                r.status in ("delivered", "failed") for r in rows):
            return {r.recipient: r for r in rows}
        if time.monotonic() >= deadline:
            raise AssertionError(f"deliveries to {sorted(mine)} not final: {rows}")
        time.sleep(0.05)


def test_list_post_reaches_every_member_with_list_headers(shared: RelayProcess,
                                                          module_sink: SmtpSink) -> None:
    address, members = shared.fresh_list(name="Team")
    local = address.split("@")[0]
    send(shared, [address], make_message(address))

    copies = module_sink.wait_for_copies(members)
    assert sorted(r for m in copies for r in m.rcpt_tos) == sorted(members)
    for message in copies:
        assert message.mail_from == f"{local}-bounces@example.test"
        header, _ = headers.split_message(message.content)
        assert headers.field_values(header, "List-Id") == [f'"Team" <{local}.example.test>']
        assert len(headers.field_values(header, "X-MailFlow-Loop")) == 1
    # One post to three members is one SMTP transaction, not three.
    assert len(copies) == 1


def test_alias_forwards_to_external_target_without_list_headers(shared: RelayProcess,
                                                                module_sink: SmtpSink) -> None:
    address, [target] = shared.fresh_list(members=1, kind=ListKind.ALIAS)
    send(shared, [address], make_message(address))

    [copy] = module_sink.wait_for_copies([target])
    assert copy.rcpt_tos == (target,)
    header, _ = headers.split_message(copy.content)
    assert headers.field_values(header, "List-Id") == []
    # SRS (docs/rules.md): the alias's domain, naming the poster for the way back.
    assert copy.mail_from.startswith("SRS0=")
    assert copy.mail_from.endswith("=outside.test=poster@example.test")


def test_body_and_original_headers_arrive_byte_identical(shared: RelayProcess,
                                                         module_sink: SmtpSink) -> None:
    address, members = shared.fresh_list(members=1)
    body = (b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n"
            b".leading dot line\r\n..two dots\r\n  trailing spaces   \r\n"
            + "Grüße, ÿ € 𝄞\r\n".encode() + b"x" * 990 + b"\r\n\r\n\r\n--b1--\r\n")
    data = make_message(address, body=body, extra_headers=[
        "MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="b1"',
        "X-Folded: first\r\n\tsecond line"])
    send(shared, [address], data)

    [copy] = module_sink.wait_for_copies(members)
    arrived = copy.content
    assert arrived.endswith(data)  # only header fields were prepended
    assert headers.split_message(arrived)[1] == headers.split_message(data)[1]


def test_incoming_list_headers_are_replaced_not_duplicated(shared: RelayProcess,
                                                           module_sink: SmtpSink) -> None:
    address, members = shared.fresh_list(members=1)
    data = make_message(address, extra_headers=["List-Id: <other.list.test>"])
    send(shared, [address], data)
    [copy] = module_sink.wait_for_copies(members)
    header, _ = headers.split_message(copy.content)
    assert headers.field_values(header, "List-Id") == [f"<{address.replace('@', '.')}>"]


def test_unknown_domain_and_unknown_address_are_refused_at_rcpt(shared: RelayProcess
                                                                ) -> None:
    with smtplib.SMTP("127.0.0.1", shared.smtp_port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("poster@outside.test")
        code, text = client.rcpt("someone@not-ours.test")
        assert (code, text[:5]) == (550, b"5.7.1")
        code, text = client.rcpt("nobody@example.test")
        assert (code, text[:5]) == (550, b"5.1.1")
        code, _ = client.rcpt("team@example.test")
        assert code == 250


def test_postmaster_and_abuse_are_accepted_and_forwarded_to_their_settings(
        shared: RelayProcess, module_sink: SmtpSink) -> None:
    postmaster = shared.env["MAILFLOW_POSTMASTER_ADDRESS"]
    abuse = shared.env["MAILFLOW_ABUSE_ADDRESS"]
    with smtplib.SMTP("127.0.0.1", shared.smtp_port, timeout=30) as client:
        client.ehlo("client.test")
        assert client.mail("poster@outside.test")[0] == 250
        # RFC 5321 4.5.1: "postmaster" without a domain, in any case, must be accepted.
        assert client.rcpt("<postmaster>")[0] == 250
        assert client.rcpt("PostMaster@Example.test")[0] == 250
        assert client.rcpt("abuse@example.test")[0] == 250
        code, reply = client.rcpt("hostmaster@example.test")
        assert (code, reply[:5]) == (550, b"5.1.1")
        code, reply = client.rcpt("postmaster@not-ours.test")
        assert (code, reply[:5]) == (550, b"5.7.1")  # never a relay for other domains
        assert client.data(make_message("postmaster@example.test"))[0] == 250

    final = wait_final(shared, [postmaster, abuse])
    assert {r.list_address for r in final.values()} == {"postmaster", "abuse"}
    copies = module_sink.wait_for_copies([postmaster, abuse])
    # postmaster and Postmaster@ are one alias: one copy for it, one for abuse
    assert sorted(c.rcpt_tos for c in copies) == [(abuse,), (postmaster,)]
    for copy in copies:
        assert copy.mail_from == "<>"  # a notification: a failure is never bounced
        header, _ = headers.split_message(copy.content)
        assert headers.field_values(header, "List-Id") == []  # an alias, not a list


def test_an_idn_domain_added_in_any_spelling_takes_smtputf8_mail(
        shared: RelayProcess, module_sink: SmtpSink) -> None:
    _, [member] = shared.fresh_list(members=1)  # a member address of this test's own
    with shared.repository() as repo:
        directory = DirectoryService(repo)
        # what `mailflow domain add ünïcode.example` and `mailflow list create` do
        assert directory.add_domain("ünïcode.example").name == "xn--ncode-cta3g.example"
        directory.create_list("l@ÜNÏCODE.example", kind=ListKind.ALIAS)
        directory.add_members("l@xn--ncode-cta3g.example", [member])
    with smtplib.SMTP("127.0.0.1", shared.smtp_port, timeout=30) as client:
        client.ehlo("client.test")
        assert client.has_extn("smtputf8")
        assert client.mail("poster@outside.test", ["SMTPUTF8"])[0] == 250
        assert client.rcpt("<l@ünïcode.example>")[0] == 250
        assert client.rcpt("<l@xn--ncode-cta3g.example>")[0] == 250  # the same alias
        code, reply = client.rcpt("<l@a\u200db.example>")
        assert (code, reply[:5]) == (501, b"5.1.3")
        assert b"not a valid internationalised domain name" in reply
        assert client.data(make_message("l@ünïcode.example"))[0] == 250
    wait_final(shared, [member])
    [copy] = module_sink.wait_for_copies([member])
    assert copy.rcpt_tos == (member,)
    # An alias forward: SRS of the alias's domain, in its A-label form.
    assert copy.mail_from.startswith("SRS0=")
    assert copy.mail_from.endswith("=outside.test=poster@xn--ncode-cta3g.example")


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


def test_too_many_received_headers_is_a_loop(shared: RelayProcess,
                                             module_sink: SmtpSink) -> None:
    address, members = shared.fresh_list()
    hops = [f"Received: from hop{i}.test by hop{i + 1}.test; Mon, 23 Nov 2026 10:00:00 +0000"
            for i in range(31)]
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(shared, [address], make_message(address, subject="31 hops", extra_headers=hops))
    assert refused.value.smtp_code == 554
    assert refused.value.smtp_error.startswith(b"5.4.6")
    # Thirty hops are still fine.
    send(shared, [address], make_message(address, subject="30 hops", extra_headers=hops[:30]))
    [copy] = module_sink.wait_for_copies(members)
    assert headers.field_values(headers.split_message(copy.content)[0],
                                "Subject") == ["30 hops"]


def test_our_own_copy_coming_back_is_refused_as_a_loop(shared: RelayProcess,
                                                       module_sink: SmtpSink) -> None:
    looping, _ = shared.fresh_list(members=0)
    with shared.repository() as repo:
        repo.add_members(looping, [looping], time.time())  # the list is its own member
    other, [member] = shared.fresh_list(members=1)
    send(shared, [looping], make_message(looping))
    [first] = module_sink.wait_for_copies([looping])
    copy = first.content
    bounces = looping.replace("@", "-bounces@")

    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(shared, [looping], copy, sender=bounces)
    assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (554, b"5.4.6")
    # SMTP is all or nothing: with a looping recipient, no recipient gets it.
    with pytest.raises(smtplib.SMTPDataError):
        send(shared, [other, looping], copy)
    # The same copy may still be posted to a different list on its own.
    send(shared, [other], copy)
    assert [m.rcpt_tos for m in module_sink.wait_for_copies([member])] == [(member,)]
    # Both deliveries final: nothing else can follow, so exactly one copy each.
    assert {r: d.status for r, d in wait_final(shared, [looping, member]).items()} == {
        looping: "delivered", member: "delivered"}
    assert len(module_sink.wait_for_copies([looping, member], timeout=0)) == 2


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
        make_relay: Callable[..., RelayProcess], sink: SmtpSink) -> None:
    # Kept for an hour: with the suite's retention of 0 the collector may take both
    # blobs between the last delivery and the checks below.
    relay = make_relay(blob_retention="3600").start()
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


def test_temporary_failures_are_deferred_then_delivered(shared: RelayProcess,
                                                        module_sink: SmtpSink) -> None:
    address, [member] = shared.fresh_list(members=1)
    module_sink.fail_rcpt(member, "451 4.3.0 busy, try later", "452 4.2.2 mailbox full")
    send(shared, [address], make_message(address))

    assert len(module_sink.wait_for_copies([member], timeout=30)) == 1
    assert wait_final(shared, [member])[member].status == "delivered"
    state = queue_json(shared)  # the CLI's view of a delivery with a history
    assert set(state["counts"]) == {*NONE, "held", "deleted"}  # every state, even at 0
    [delivery] = [d for d in state["deliveries"] if d["recipient"] == member]
    assert (delivery["list"], delivery["status"]) == (address, "delivered")
    assert delivery["attempts"] == 3
    assert delivery["last_reply"].startswith("250")


def test_permanent_failure_fails_only_that_recipient(shared: RelayProcess,
                                                     module_sink: SmtpSink) -> None:
    address, (ann, ben, cat) = shared.fresh_list()
    module_sink.fail_rcpt(ben, "550 5.1.1 no such user")
    send(shared, [address], make_message(address))

    module_sink.wait_for_copies([ann, cat])
    # Final: no retry of the 5xx can follow (the sink would accept one now).
    by_rcpt = wait_final(shared, [ann, ben, cat])
    assert {r: d.status for r, d in by_rcpt.items()} == {
        ann: "delivered", ben: "failed", cat: "delivered"}
    assert by_rcpt[ben].attempts == 1
    assert (by_rcpt[ben].last_reply or "").startswith("550")
    # One transaction for the three, and no retry of the 5xx.
    assert [m.rcpt_tos for m in module_sink.wait_for_copies([ann, ben, cat], timeout=0)] == [
        (ann, cat)]


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


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # PG: test_scheduler
def test_a_slow_next_hop_without_smtputf8_gets_each_copy_once(
        make_relay: Callable[..., RelayProcess], sink: SmtpSink) -> None:
    """Issue 10 items 4 and 5 as a list owner sees them.  The next hop answers each RCPT
    after 0.3 s, one at a time (no PIPELINING), so eight members take 2.4 s: over two
    terms of a 1 s lease, which the relay renews.  It does not offer SMTPUTF8: the one
    UTF-8 member fails (553 5.6.7) in a transaction of its own, the others are sent."""
    ascii_members = [f"m{i}@members.test" for i in range(8)]
    utf8_member = "ünï@members.test"
    relay = make_relay(delivery_lease="1", smtp_timeout="5").start()
    with relay.repository() as repo:
        make_list(repo, "slow@example.test", [*ascii_members, utf8_member])
    sink.handler.pipelining = False
    sink.handler.rcpt_delay = 0.3
    sink.handler.smtputf8 = False
    send(relay, ["slow@example.test"], make_message("slow@example.test"))

    assert relay.wait_settled(timeout=30) == {**NONE, "delivered": 8, "failed": 1}
    assert sorted(sink.recipients()) == ascii_members  # one copy each
    assert sink.handler.rcpts_seen == 8
    by_rcpt = {d["recipient"]: d for d in queue_json(relay)["deliveries"]}
    assert {(by_rcpt[r]["status"], by_rcpt[r]["attempts"]) for r in ascii_members} == {
        ("delivered", 1)}
    assert by_rcpt[utf8_member]["status"] == "failed"
    assert by_rcpt[utf8_member]["last_reply"].startswith("553 5.6.7")


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


def test_unknown_address_after_restart_and_health_endpoints(shared: RelayProcess) -> None:
    import httpx

    base = f"http://127.0.0.1:{shared.http_port}"
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    metrics = httpx.get(f"{base}/metrics").text
    assert "mailflow_messages_received_total" in metrics


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


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_a_dead_child_process_is_replaced_and_smtp_answers_again(relay: RelayProcess,
                                                                 sink: SmtpSink) -> None:
    with relay.repository() as repo:
        make_list(repo, "team@example.test", TEAM[:1])
    send(relay, ["team@example.test"], make_message("team@example.test"))
    assert sink.wait_for_recipients(1) == TEAM[:1]
    assert relay.process is not None
    [child] = descendants(relay.process.pid)  # SMTP sessions and the egress
    os.kill(child, signal.SIGKILL)
    # Connections made while no child runs wait in the listen backlog of the socket the
    # relay keeps; the next child serves them.
    send(relay, ["team@example.test"], make_message("team@example.test", subject="again"))
    assert sink.wait_for_recipients(2) == TEAM[:1] * 2
    assert wait_until(lambda: len(descendants(relay.process.pid)) == 1)  # type: ignore[union-attr]
    assert descendants(relay.process.pid) != [child]  # type: ignore[union-attr]


def test_listeners_can_run_in_the_relay_process(make_relay: Callable[..., RelayProcess],
                                                sink: SmtpSink) -> None:
    relay = make_relay(listener_process="false").start()
    with relay.repository() as repo:
        make_list(repo, "team@example.test", TEAM)
    send(relay, ["team@example.test"], make_message("team@example.test"))
    assert sorted(sink.wait_for_recipients(3)) == sorted(TEAM)
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(relay, ["nobody@example.test"], make_message("nobody@example.test"))
