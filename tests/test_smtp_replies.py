"""Replies a client can rely on (issue 10 item 12): EHLO's PIPELINING and
ENHANCEDSTATUSCODES, an enhanced status code in every reply, pipelined commands answered
in order.

The end-to-end tests speak raw bytes, so a pipelined write is really one write.  The
replies are the sessions' business, not the store's: the relay runs on SQLite only.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from typing import cast

import aiosmtpd.lmtp
import aiosmtpd.smtp
import pytest

from mailflow.ingress.replies import AIOSMTPD_REPLIES, advertise, with_enhanced_code
from mailflow.ingress.smtp import Acceptor, RelayHandler
from mailflow.testing.factories import make_message
from mailflow.testing.raw_smtp import connect, talk
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink

ENHANCED = re.compile(r"\d{3}[ -][245]\.\d{1,3}\.\d{1,3} ")

# -- the rules, without a process ----------------------------------------------------------


@pytest.mark.parametrize(("start", "enhanced"), AIOSMTPD_REPLIES)
def test_each_aiosmtpd_reply_named_still_exists_and_gets_its_code(start: str,
                                                                  enhanced: str) -> None:
    source = inspect.getsource(aiosmtpd.smtp) + inspect.getsource(aiosmtpd.lmtp)
    assert start[4:] in source  # else aiosmtpd changed its words: map the new ones
    assert with_enhanced_code(start + " and more") == f"{start[:3]} {enhanced} {start[4:]} and more"


@pytest.mark.parametrize(("line", "expected"), [
    ("250 2.1.5 OK", "250 2.1.5 OK"),                              # ours, from errors.TABLE
    ("421 4.7.0 EHLO sent too many times", "421 4.7.0 EHLO sent too many times"),
    ("220 relay.test MailFlow Relay", "220 relay.test MailFlow Relay"),    # the greeting
    ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),
    ("334 VXNlcm5hbWU6", "334 VXNlcm5hbWU6"),
    ("552 Error: Too much mail data", "552 5.3.4 message too large"),
    ("500 Line too long (see RFC5321 4.5.3.1.6)",
     "500 5.5.2 line too long (RFC 5321 4.5.3.1.6: at most 1000 octets)"),
    ("451 something new", "451 4.0.0 something new"),             # a reply nobody mapped
    ("250 done", "250 2.0.0 done"),
])
def test_replies_get_an_enhanced_code_except_greetings_and_intermediate_ones(
        line: str, expected: str) -> None:
    assert with_enhanced_code(line) == expected


def test_answers_to_ehlo_keep_no_code_and_advertise_pipelining() -> None:
    assert with_enhanced_code("250 HELP", greeting_answer=True) == "250 HELP"
    assert with_enhanced_code("250-SIZE 1024", greeting_answer=True) == "250-SIZE 1024"
    assert with_enhanced_code("501 Syntax: EHLO hostname", greeting_answer=True) == (
        "501 5.5.4 Syntax: EHLO hostname")
    answer = ["250-relay.test", "250-SIZE 1024", "250-8BITMIME", "250 HELP"]
    assert advertise(answer) == ["250-relay.test", "250-SIZE 1024", "250-8BITMIME",
                                 "250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250 HELP"]
    assert advertise(advertise(answer)) == advertise(answer)
    assert advertise(["501 5.5.2 the HELO name …"]) == ["501 5.5.2 the HELO name …"]


async def test_an_error_of_ours_in_a_command_is_a_temporary_failure() -> None:
    """aiosmtpd would answer ``500 Error: (RuntimeError) …``: permanent, and it shows
    the exception; a bug of ours must make the client retry."""
    handler = RelayHandler(cast(Acceptor, object()))
    assert await handler.handle_exception(RuntimeError("secret detail")) == (
        "451 4.3.0 internal error, try again later")


# -- over real sockets ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_databases() -> Iterator[Callable[[], str]]:
    yield lambda: "sqlite:"


@pytest.fixture(scope="module")
def shared(make_module_relay: Callable[..., RelayProcess]) -> RelayProcess:
    """One SMTP and LMTP relay: each test posts to lists of its own or gets refusals."""
    return make_module_relay(lmtp=True).start()


def test_ehlo_and_lhlo_advertise_pipelining_and_enhanced_status_codes(
        shared: RelayProcess) -> None:
    with connect(shared.smtp_port) as client:
        client.reply()
        lines = client.send(b"EHLO client.test").splitlines()
        assert {"250-PIPELINING", "250-ENHANCEDSTATUSCODES"} <= set(lines)
        assert lines[0] == "250-relay.test" and lines[-1] == "250 HELP"
    assert shared.lmtp_port is not None
    with connect(shared.lmtp_port) as client:
        client.reply()
        lines = client.send(b"LHLO client.test").splitlines()
        assert {"250-PIPELINING", "250-ENHANCEDSTATUSCODES"} <= set(lines)


def test_a_pipelined_transaction_gets_its_replies_in_order(shared: RelayProcess,
                                                           module_sink: SmtpSink) -> None:
    address, members = shared.fresh_list(members=2)
    other, other_members = shared.fresh_list(members=1)
    with talk(shared.smtp_port) as client:
        client.write(b"MAIL FROM:<poster@outside.test>\r\n"
                            + f"RCPT TO:<{address}>\r\n".encode()
                            + b"RCPT TO:<nobody@example.test>\r\n"
                            + f"RCPT TO:<{other}>\r\n".encode() + b"DATA\r\n")
        expected = ["250 2.1.0 OK", "250 2.1.5 OK", "550 5.1.1 ", "250 2.1.5 OK",
                    "354 End data with <CR><LF>.<CR><LF>"]
        assert [client.reply()[:len(e)] for e in expected] == expected
        client.write(make_message(address) + b".\r\nRSET\r\nQUIT\r\n")
        assert client.reply().startswith("250 2.0.0 OK queued as ")
        assert client.reply() == "250 2.0.0 OK"
        assert client.reply() == "221 2.0.0 Bye"
    copies = module_sink.wait_for_copies(members + other_members)
    assert sorted(r for m in copies for r in m.rcpt_tos) == sorted(members + other_members)


SMTP_EXCHANGES: list[list[tuple[bytes, str]]] = [
    [(b"NOOP", "250 2.0.0"), (b"RSET", "250 2.0.0"), (b"HELP", "250 2.0.0 Supported"),
     (b"HELP MAIL", "250 2.0.0 Syntax: MAIL FROM"), (b"HELP RCPT", "250 2.0.0 Syntax: RCPT TO"),
     (b"HELP FOO", "501 5.5.4"),
     (b"VRFY <someone@example.test>", "252 2.0.0"), (b"VRFY", "501 5.5.4"),
     (b"EXPN team", "502 5.5.1"), (b"FOO", "500 5.5.1"), (b"", "500 5.5.2"),
     (b"NOOP " + b"x" * 600, "500 5.5.2"), (b"STARTTLS x", "501 5.5.4"),
     (b"RSET x", "501 5.5.4"), (b"DATA", "503 5.5.1"), (b"MAIL", "501 5.5.4"),
     (b"MAIL FROM:<a@outside.test> BODY=9BIT", "501 5.5.4"),
     (b"MAIL FROM:<a@outside.test> FOO=1", "555 5.5.4"),
     (b"MAIL FROM:<a@outside.test> SIZE=99999999999", "552 5.3.4"),
     (b"MAIL FROM:<a@outside.test>", "250 2.1.0"), (b"MAIL FROM:<a@outside.test>", "503 5.5.1"),
     (b"DATA", "503 5.5.1"), (b"QUIT x", "501 5.5.4"), (b"QUIT", "221 2.0.0")],
    [(b"RCPT TO:<team@example.test>", "503 5.5.1"), (b"MAIL FROM:<a@outside.test>", "250 2.1.0"),
     (b"RCPT TO:<a@b@example.test>", "553 5.1.3"), (b"QUIT", "221 2.0.0")],
    [(b"MAIL FROM:<a@outside.test>", "250 2.1.0"), (b"RCPT", "501 5.5.4"),
     (b"RCPT TO:<x@example.test> FOO=1", "555 5.5.4"), (b"HELO", "501 5.5.4"),
     (b"QUIT", "221 2.0.0")],
    # The email package's parser raises on this one: not a 500 with the exception.
    [(b"MAIL FROM:<a@[x>", "553 5.1.3"), (b"MAIL FROM:<a@outside.test>", "250 2.1.0"),
     (b"RCPT TO:<a@[x>", "553 5.1.3"), (b"QUIT", "221 2.0.0")],
]


@pytest.mark.parametrize("exchange", SMTP_EXCHANGES,
                         ids=["commands", "recipients", "more", "malformed"])
def test_every_smtp_reply_carries_an_enhanced_status_code(shared: RelayProcess,
                                                          exchange: list[tuple[bytes, str]]
                                                          ) -> None:
    with connect(shared.smtp_port) as client:
        assert client.reply().startswith("220 relay.test ")  # the greeting keeps none
        client.send(b"EHLO client.test")
        for command, expected in exchange:
            reply = client.send(command)
            assert reply.startswith(expected), (command, reply)
            assert ENHANCED.match(reply), (command, reply)
        assert client.closed()


def test_every_lmtp_reply_carries_an_enhanced_status_code(shared: RelayProcess) -> None:
    address, _ = shared.fresh_list(members=1)
    assert shared.lmtp_port is not None
    with connect(shared.lmtp_port) as client:
        client.reply()
        for command, expected in [
                (b"MAIL FROM:<a@outside.test>", "503 5.5.1"), (b"HELO client.test", "500 5.5.1"),
                (b"EHLO client.test", "500 5.5.1"), (b"LHLO client.test", "250-relay.test"),
                (b"MAIL FROM:<a@outside.test>", "250 2.1.0"),
                (f"RCPT TO:<{address}>".encode(), "250 2.1.5"), (b"NOOP", "250 2.0.0"),
                (b"QUIT", "221 2.0.0")]:
            assert client.send(command).startswith(expected), command
