"""Egress providers against a real SMTP sink: pooling, TLS, AUTH, per-recipient replies."""

from __future__ import annotations

import asyncio
import io
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Literal

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from mailflow.child.channel import dumps
from mailflow.child.egress import ProcessEgress
from mailflow.child.messages import (
    Accepted,
    AcceptedEach,
    Failure,
    RecipientChecked,
    RecipientVerdict,
    Refused,
)
from mailflow.config import parse_smtp_relay
from mailflow.egress.base import Egress
from mailflow.egress.lmtp import LmtpEgress
from mailflow.egress.routes import ProviderOptions, build_provider
from mailflow.egress.smtp import SmtpEgress
from mailflow.egress.smtp_client import dot_stuffed
from mailflow.egress.stdout import StdoutEgress
from mailflow.errors import EgressUnavailable, LoopDetected, StorageUnavailable, UnknownRecipient
from mailflow.model import Verdict
from mailflow.testing.ports import free_port
from mailflow.testing.sink import SmtpSink

CONTENT = b"From: a@x.test\r\nSubject: t\r\n\r\nbody\r\n"


EgressFactory = Callable[..., Egress]


@pytest.fixture(params=["in-process", "child-process"])
async def make_egress(request: pytest.FixtureRequest) -> AsyncIterator[EgressFactory]:
    """SMTP egresses as the relay builds them: in its process, or served by a child."""
    made: list[Egress] = []

    def make(url: str, idle_check: float = 10.0, transaction_timeout: float = 600.0) -> Egress:
        relay = parse_smtp_relay(url)
        egress: Egress
        if request.param == "in-process":
            egress = SmtpEgress(relay, pool_size=2, timeout=5, idle_check=idle_check,
                                local_hostname="relay.test",
                                transaction_timeout=transaction_timeout)
        else:  # every transaction through the child, even a lone one
            egress = ProcessEgress(relay, pool_size=2, timeout=5, idle_check=idle_check,
                                   local_hostname="relay.test", alone_in_process=False,
                                   transaction_timeout=transaction_timeout)
        made.append(egress)
        return egress

    yield make
    for egress in made:
        await egress.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


async def test_connections_are_reused_and_replies_kept_per_recipient(
        sink: SmtpSink, make_egress: EgressFactory) -> None:
    egress = make_egress(sink.url)
    sink.fail_rcpt("b@x.test", "550 5.1.1 unknown")
    sink.fail_rcpt("c@x.test", "452 4.2.2 full")
    try:
        replies = await egress.send("list-bounces@x.test", ["a@x.test", "b@x.test", "c@x.test"],
                                    CONTENT)
        assert [(r.recipient, r.code) for r in replies] == [
            ("a@x.test", 250), ("b@x.test", 550), ("c@x.test", 452)]
        for _ in range(3):
            await egress.send("list-bounces@x.test", ["a@x.test"], CONTENT)
    finally:
        await egress.close()
    assert sink.handler.connections == 1
    assert sink.recipients() == ["a@x.test"] * 4
    assert sink.messages[0].content == CONTENT


async def test_all_recipients_refused_and_data_refused(
        sink: SmtpSink, make_egress: EgressFactory) -> None:
    egress = make_egress(sink.url)
    sink.fail_rcpt("a@x.test", "550 5.1.1 unknown")
    try:
        [reply] = await egress.send("l@x.test", ["a@x.test"], CONTENT)
        assert (reply.code, reply.permanent) == (550, True)
        sink.fail_data("451 4.3.0 queue full")
        replies = await egress.send("l@x.test", ["a@x.test", "b@x.test"], CONTENT)
        assert [r.code for r in replies] == [451, 451]
        replies = await egress.send("l@x.test", ["a@x.test"], CONTENT)  # reconnects
        assert replies[0].delivered
    finally:
        await egress.close()


async def test_dead_connection_is_replaced_after_a_noop_check(make_egress: EgressFactory) -> None:
    port = free_port()
    egress = make_egress(f"smtp://127.0.0.1:{port}", idle_check=0)
    try:
        with SmtpSink(port=port) as first:
            await egress.send("l@x.test", ["a@x.test"], CONTENT)
            assert first.recipients() == ["a@x.test"]
        with SmtpSink(port=port) as second:  # the pooled connection is now dead
            await egress.send("l@x.test", ["b@x.test"], CONTENT)
            assert second.recipients() == ["b@x.test"]
    finally:
        await egress.close()


async def test_unreachable_relay_is_a_temporary_failure(make_egress: EgressFactory) -> None:
    egress = make_egress(f"smtp://127.0.0.1:{free_port()}")
    with pytest.raises(EgressUnavailable):
        await egress.send("l@x.test", ["a@x.test"], CONTENT)


async def test_a_next_hop_without_smtputf8_refuses_only_the_utf8_recipients(
        sink: SmtpSink, make_egress: EgressFactory) -> None:
    """RFC 6531 3.2: a UTF-8 address cannot go to such a server; the others still do."""
    sink.handler.smtputf8 = False
    egress = make_egress(sink.url)
    try:
        replies = await egress.send("l@x.test", ["a@x.test", "ünï@x.test", "b@x.test"],
                                    CONTENT)
    finally:
        await egress.close()
    assert [(r.recipient, r.code, r.text[:5]) for r in replies] == [
        ("a@x.test", 250, "2.0.0"), ("ünï@x.test", 553, "5.6.7"), ("b@x.test", 250, "2.0.0")]
    assert replies[1].permanent
    assert sink.recipients() == ["a@x.test", "b@x.test"]


async def test_a_whole_transaction_is_bounded_in_time(
        sink: SmtpSink, make_egress: EgressFactory) -> None:
    """A tarpit answering each RCPT well within the reply timeout (5 s) still cannot hold
    a transaction longer than ``transaction_timeout`` (in the child too)."""
    sink.handler.pipelining = False
    sink.handler.rcpt_delay = 0.2
    egress = make_egress(sink.url, transaction_timeout=0.5)
    try:
        with pytest.raises(EgressUnavailable, match=r"took longer than 0\.5 s"):
            await egress.send("l@x.test", [f"m{i}@x.test" for i in range(6)], CONTENT)
        sink.handler.rcpt_delay = 0
        replies = await egress.send("l@x.test", ["a@x.test"], CONTENT)  # a new connection
    finally:
        await egress.close()
    assert replies[0].delivered and sink.recipients() == ["a@x.test"]


# -- a next hop that misbehaves (the sink's fault modes) --------------------------


@pytest.fixture
async def egress_to(sink: SmtpSink) -> AsyncIterator[SmtpEgress]:
    """An SMTP egress to the sink, waiting 0.3 s at most for any reply."""
    egress = SmtpEgress(parse_smtp_relay(sink.url), pool_size=1, timeout=0.3,
                        idle_check=10, local_hostname="relay.test")
    yield egress
    await egress.close()


async def test_a_connection_cut_in_data_is_a_temporary_failure(
        sink: SmtpSink, egress_to: SmtpEgress) -> None:
    sink.handler.drop_in_data = True
    with pytest.raises(EgressUnavailable, match="connection"):
        await egress_to.send("l@x.test", ["a@x.test"], CONTENT)
    assert sink.handler.drops == 1 and sink.messages == []
    sink.handler.drop_in_data = False
    assert (await egress_to.send("l@x.test", ["a@x.test"], CONTENT))[0].delivered


@pytest.mark.parametrize("hang", ["rcpt", "data"])
async def test_a_next_hop_that_stops_answering_is_a_temporary_failure(
        hang: Literal["rcpt", "data"], sink: SmtpSink, egress_to: SmtpEgress) -> None:
    """No reply within the reply timeout: deferred.  After the content (``data``) the
    next hop may have delivered it: the retry can duplicate it, never lose it."""
    sink.handler.hang = hang
    with pytest.raises(EgressUnavailable, match="TimeoutError"):
        await egress_to.send("l@x.test", ["a@x.test"], CONTENT)
    assert sink.handler.data_received == (1 if hang == "data" else 0)
    sink.handler.hang = ""
    assert (await egress_to.send("l@x.test", ["a@x.test"], CONTENT))[0].delivered


async def test_a_next_hop_refusing_sessions_for_a_while_is_tried_again(
        sink: SmtpSink, egress_to: SmtpEgress) -> None:
    sink.refuse_for(0.5)
    with pytest.raises(EgressUnavailable, match=r"421 4\.3\.2"):
        await egress_to.send("l@x.test", ["a@x.test"], CONTENT)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while sink.handler.refusing:  # the sink's own clock says when the 421s end
        assert loop.time() < deadline
        await asyncio.sleep(0.05)
    assert (await egress_to.send("l@x.test", ["a@x.test"], CONTENT))[0].delivered


async def test_too_many_recipients_are_answered_452_each(
        sink: SmtpSink, egress_to: SmtpEgress) -> None:
    """452 is temporary: the scheduler defers those recipients, the others are sent."""
    sink.handler.max_rcpts = 2
    recipients = ["a@x.test", "b@x.test", "c@x.test", "d@x.test"]
    replies = await egress_to.send("l@x.test", recipients, CONTENT)
    assert [(r.code, r.permanent) for r in replies] == [
        (250, False), (250, False), (452, False), (452, False)]
    assert sink.recipients() == ["a@x.test", "b@x.test"]


def authenticator(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"relay-user", b"s3cret:pw")
    # handled=False: aiosmtpd answers a failure with 535 itself (handled=True would leave
    # the client waiting for a reply until its timeout).
    return AuthResult(success=ok, handled=False)


async def test_starttls_with_auth(certificate: tuple[Path, Path],
                                  make_egress: EgressFactory) -> None:
    with SmtpSink(tls_context=server_context(certificate), require_starttls=True,
                  authenticator=authenticator, auth_required=True) as sink:
        egress = make_egress(f"smtp://relay-user:s3cret%3Apw@127.0.0.1:{sink.port}"
                            "?tls=starttls&verify=no")
        try:
            replies = await egress.send("l@x.test", ["a@x.test"], CONTENT)
        finally:
            await egress.close()
        assert replies[0].delivered and sink.recipients() == ["a@x.test"]

        wrong = make_egress(f"smtp://relay-user:wrong@127.0.0.1:{sink.port}"
                           "?tls=starttls&verify=no")
        with pytest.raises(EgressUnavailable) as refused:
            await wrong.send("l@x.test", ["a@x.test"], CONTENT)
        assert "535" in str(refused.value)  # the server's refusal, not a timeout
        assert sink.recipients() == ["a@x.test"]


async def test_implicit_tls(certificate: tuple[Path, Path], make_egress: EgressFactory) -> None:
    with SmtpSink(ssl_context=server_context(certificate)) as sink:
        egress = make_egress(f"smtps://127.0.0.1:{sink.port}?verify=no")
        try:
            replies = await egress.send("l@x.test", ["a@x.test"], CONTENT)
        finally:
            await egress.close()
        assert replies[0].delivered and sink.recipients() == ["a@x.test"]


async def test_stdout_egress_prints_envelope_and_message() -> None:
    stream = io.BytesIO()
    replies = await StdoutEgress(stream).send("l@x.test", ["a@x.test", "b@x.test"], CONTENT)
    assert all(r.delivered for r in replies)
    printed = stream.getvalue()
    assert b"MAIL FROM:<l@x.test>" in printed and b"RCPT TO:<b@x.test>" in printed
    assert CONTENT in printed


class BatchingServer:
    """An SMTP server that answers an envelope only once all of it (up to DATA) arrived.

    A client that waits for each reply before the next command never gets one, so a
    transaction succeeds here only when it is really pipelined.
    """

    def __init__(self) -> None:
        self.reads: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> BatchingServer:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"smtp://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 batching.test ESMTP\r\n")
        pending: list[bytes] = []
        try:
            while line := await asyncio.wait_for(reader.readline(), 10):
                command = line.strip().upper()
                if command.startswith(b"EHLO"):
                    writer.write(b"250-batching.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                elif command in (b"QUIT", b"NOOP", b"RSET"):
                    writer.write(b"221 bye\r\n" if command == b"QUIT" else b"250 ok\r\n")
                elif command == b"DATA":
                    self.reads.append(b"".join(pending) + line)
                    replies = [b"550 5.1.1 no such user\r\n" if b"<nobody@" in p
                               else b"250 ok\r\n" for p in pending]
                    writer.write(b"".join(replies) + b"354 go on\r\n")
                    pending = []
                    body = await asyncio.wait_for(reader.readuntil(b"\r\n.\r\n"), 10)
                    self.reads.append(body)
                    writer.write(b"250 2.0.0 queued\r\n")
                else:
                    pending.append(line)
                await writer.drain()
        finally:
            writer.close()


async def test_envelope_is_pipelined_in_one_write(make_egress: EgressFactory) -> None:
    async with BatchingServer() as server:
        egress = make_egress(server.url)
        try:
            replies = await egress.send("l@x.test", ["a@x.test", "nobody@x.test", "c@x.test"],
                                        b"Subject: t\r\n\r\n.dot line\r\nend")
        finally:
            await egress.close()
    assert [(r.recipient, r.code) for r in replies] == [
        ("a@x.test", 250), ("nobody@x.test", 550), ("c@x.test", 250)]
    envelope, body = server.reads
    assert envelope.count(b"RCPT TO:") == 3 and envelope.endswith(b"DATA\r\n")
    assert body == b"Subject: t\r\n\r\n..dot line\r\nend\r\n.\r\n"  # stuffed, CRLF-ended


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "lock-step"])
async def test_refused_sender_applies_to_every_recipient(
        pipelining: bool, make_egress: EgressFactory) -> None:
    """A temporary MAIL FROM refusal must not turn into permanent 503s for the RCPTs."""
    with SmtpSink() as sink:
        sink.handler.pipelining = pipelining
        sink.handler.mail_replies.append("451 4.3.2 try later")
        egress = make_egress(sink.url)
        try:
            replies = await egress.send("l@x.test", ["a@x.test", "b@x.test"], CONTENT)
            assert [(r.code, r.permanent) for r in replies] == [(451, False), (451, False)]
            again = await egress.send("l@x.test", ["a@x.test", "b@x.test"], CONTENT)
            assert all(r.delivered for r in again)  # the session was reset, not broken
        finally:
            await egress.close()
        assert sink.handler.connections == 1
        assert sink.recipients() == ["a@x.test", "b@x.test"]
        assert sink.messages[0].content == CONTENT


async def test_lock_step_when_pipelining_is_not_offered(make_egress: EgressFactory) -> None:
    with SmtpSink() as sink:
        sink.handler.pipelining = False
        sink.fail_rcpt("a@x.test", "550 5.1.1 unknown")
        egress = make_egress(sink.url)
        try:
            [refused] = await egress.send("l@x.test", ["a@x.test"], CONTENT)
            replies = await egress.send("l@x.test", ["a@x.test", "b@x.test"], CONTENT)
        finally:
            await egress.close()
        assert refused.code == 550
        assert all(r.delivered for r in replies)
        assert sink.recipients() == ["a@x.test", "b@x.test"]


async def test_a_dead_egress_process_defers_its_transactions_and_is_replaced() -> None:
    with SmtpSink() as sink:
        egress = ProcessEgress(parse_smtp_relay(sink.url), pool_size=2, timeout=5,
                               idle_check=10, local_hostname="relay.test",
                               alone_in_process=False)
        try:
            await egress.start()
            assert (await egress.send("l@x.test", ["a@x.test"], CONTENT))[0].delivered
            sink.handler.data_delay = 1.0  # hold the next transaction on the wire
            in_flight = asyncio.create_task(egress.send("l@x.test", ["b@x.test"], CONTENT))
            # Until the sink holds the message, not yet answered.
            assert await asyncio.to_thread(sink.wait_for_data, 2, 10)
            assert egress.child.process is not None
            egress.child.process.kill()
            with pytest.raises(EgressUnavailable):  # deferred by the scheduler, not lost
                await asyncio.wait_for(in_flight, 5)
            sink.handler.data_delay = 0
            replies = await egress.send("l@x.test", ["c@x.test"], CONTENT)
            assert replies[0].delivered and egress.children_started == 2
        finally:
            await egress.close()
        assert "c@x.test" in sink.recipients() and "a@x.test" in sink.recipients()


async def test_a_lone_transaction_stays_in_process_and_a_crowd_goes_to_the_child() -> None:
    with SmtpSink() as sink:
        egress = ProcessEgress(parse_smtp_relay(sink.url), pool_size=4, timeout=5,
                               idle_check=10, local_hostname="relay.test")
        try:
            await egress.start()
            assert (await egress.send("l@x.test", ["a@x.test"], CONTENT))[0].delivered
            assert sink.handler.connections == 1  # the relay process's own connection
            sink.handler.data_delay = 0.2
            crowd = [egress.send("l@x.test", [f"m{i}@x.test"], CONTENT) for i in range(6)]
            replies = await asyncio.wait_for(asyncio.gather(*crowd), 10)
        finally:
            await egress.close()
        assert all(r[0].delivered for r in replies)
        assert sink.handler.connections >= 3  # the child opened connections of its own
        assert len(sink.recipients()) == 7


def test_the_child_process_stays_small_whatever_the_relay_sends_it() -> None:
    """The child reads the relay's answers; none may pull the store or the settings
    in (each would add tens of MB to every relay: the RSS bounds of the benchmarks)."""
    answers = [RecipientChecked(1, True), Accepted(2, "0123456789abcdef"),
               AcceptedEach(3, (RecipientVerdict.of(Verdict("a@x.test", None, "q1")),
                                RecipientVerdict.of(Verdict(
                                    "b@x.test", UnknownRecipient("no such list"), None)))),
               Refused(4, Failure.of(StorageUnavailable())),
               Refused(5, Failure.of(LoopDetected("loop")))]
    code = ("import sys\n"
            "import mailflow.child.worker\n"
            "from mailflow.child.channel import loads\n"
            "messages = loads(sys.stdin.buffer.read())\n"
            "heavy = ('sqlalchemy', 'pydantic', 'fastapi', 'alembic', 'uvicorn')\n"
            "print(len(messages), sorted(m for m in heavy if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code],
                          input=dumps(answers),
                          capture_output=True, timeout=60, check=True)
    assert done.stdout.decode().split(None, 1) == ["5", "[]\n"]


# -- LMTP (RFC 2033): one reply per recipient after the content -------------------------


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "lock-step"])
async def test_lmtp_answers_each_recipient_after_the_content(pipelining: bool) -> None:
    with SmtpSink(lmtp=True) as sink:
        sink.handler.pipelining = pipelining
        egress = build_provider(sink.url, ProviderOptions(pool_size=2, timeout=5,
                                                          idle_check=10))
        assert isinstance(egress, LmtpEgress)
        sink.fail_rcpt("d@x.test", "550 5.1.1 no such mailbox")
        sink.fail_delivery("b@x.test", "550 5.2.1 mailbox disabled")
        sink.fail_delivery("c@x.test", "451 4.2.0 mailbox locked")
        try:
            replies = await egress.send("l@x.test", ["a@x.test", "b@x.test", "c@x.test",
                                                     "d@x.test"], CONTENT)
            # The session is clean for the next transaction, on the same connection.
            again = await egress.send("l@x.test", ["c@x.test"], CONTENT)
        finally:
            await egress.close()
    assert [(r.recipient, r.code, r.text) for r in replies] == [
        ("a@x.test", 250, "2.0.0 <a@x.test> delivered"),
        ("b@x.test", 550, "5.2.1 mailbox disabled"),
        ("c@x.test", 451, "4.2.0 mailbox locked"),
        ("d@x.test", 550, "5.1.1 no such mailbox")]
    assert again[0].delivered
    assert sink.recipients() == ["a@x.test", "c@x.test"]
    assert sink.handler.connections == 1


async def test_lmtp_with_every_recipient_refused_sends_no_content() -> None:
    with SmtpSink(lmtp=True) as sink:
        egress = build_provider(sink.url, ProviderOptions(pool_size=1, timeout=5,
                                                          idle_check=10))
        sink.fail_rcpt("a@x.test", "550 5.1.1 no such mailbox")
        try:
            [refused] = await egress.send("l@x.test", ["a@x.test"], CONTENT)
            [accepted] = await egress.send("l@x.test", ["b@x.test"], CONTENT)
        finally:
            await egress.close()
    assert (refused.code, accepted.code) == (550, 250)
    assert sink.handler.transactions == 1 and sink.recipients() == ["b@x.test"]


async def test_unreachable_lmtp_server_is_a_temporary_failure() -> None:
    egress = build_provider(f"lmtp://127.0.0.1:{free_port()}",
                            ProviderOptions(pool_size=1, timeout=5, idle_check=10))
    with pytest.raises(EgressUnavailable) as error:
        await egress.send("l@x.test", ["a@x.test"], CONTENT)
    assert (error.value.code, error.value.enhanced) == (451, "4.4.1")


def test_providers_are_chosen_by_url() -> None:
    options = ProviderOptions(pool_size=1, timeout=5, idle_check=10)
    assert isinstance(build_provider("stdout:", options), StdoutEgress)
    smtps = build_provider("smtps://mail.test?verify=no", options)
    assert isinstance(smtps, SmtpEgress) and not isinstance(smtps, LmtpEgress)
    assert (smtps.relay.port, smtps.relay.tls) == (465, "implicit")
    lmtp = build_provider("lmtp://mailbox.test", options)
    assert isinstance(lmtp, LmtpEgress) and lmtp.relay.port == 24
    with pytest.raises(ValueError, match="egress URL"):
        build_provider("ses:us-east-1", options)  # the region is AWS_REGION's


@pytest.mark.parametrize(("content", "payload"), [
    (b"A: b\r\n\r\nplain\r\n", b"A: b\r\n\r\nplain\r\n.\r\n"),
    (b"A: b\n\nbare\nLF", b"A: b\r\n\r\nbare\r\nLF\r\n.\r\n"),
    (b"A: b\r\rbare CR\r", b"A: b\r\n\r\nbare CR\r\n.\r\n"),
    (b"A: b\r\n\r\n.dot\r\n..two\r\nx.y\r\n", b"A: b\r\n\r\n..dot\r\n...two\r\nx.y\r\n.\r\n"),
    (b".first line\nmixed\r\n.dot", b"..first line\r\nmixed\r\n..dot\r\n.\r\n"),
    (b"", b"\r\n.\r\n"),
])
def test_the_data_payload_is_crlf_ended_and_dot_stuffed(content: bytes, payload: bytes) -> None:
    """The fast path (content already CRLF, no leading dots) gives the same bytes."""
    assert dot_stuffed(content) == payload
