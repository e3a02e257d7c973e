"""Hostile SMTP/LMTP input: refused at the command or at DATA, with a permanent reply.

The end-to-end tests speak raw bytes over a socket: smtplib refuses to send a bare CR,
NUL or invalid UTF-8, which is exactly what a hostile client sends.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from mailflow import headers
from mailflow.errors import MalformedMessage, PermanentFailure, smtp_reply
from mailflow.pipeline.accept.commands import check_helo, check_recipient_address, check_sender
from mailflow.pipeline.accept.well_formed import check_framed, check_well_formed
from mailflow.testing.factories import make_message
from mailflow.testing.relay import RelayProcess

# -- the rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "problem"), [
    ("mail.example.test", None), ("[192.0.2.1]", None), ("ünïcode.example", None),
    ("evil.test\rBcc: v@e.test", "contains the control character U+000D"),
    ("x\n", "contains the control character U+000A"),
    ("x\0y", "contains the control character U+0000"),
    ("x\x85y", "contains the control character U+0085"),
    ("x\x7f", "contains the control character U+007F"),
    ("x\u2028y", "contains the control character U+2028"),
    ("\udcff.test", "is not valid UTF-8"),
])
def test_unsafe_text_names_the_first_offending_character(text: str, problem: str | None
                                                         ) -> None:
    assert headers.unsafe_text(text) == problem
    assert (problem is None) == (headers.header_safe(text) == text)


def _reply(check: Callable[[str], None], value: str) -> str:
    with pytest.raises(PermanentFailure) as caught:
        check(value)
    return smtp_reply(caught.value)


def test_command_arguments_get_permanent_enhanced_refusals() -> None:
    assert _reply(check_helo, "evil\rX-Injected: yes").startswith(
        "501 5.5.2 the HELO name contains the control character U+000D")
    assert _reply(check_helo, "\udcff").startswith("501 5.5.2 the HELO name is not valid UTF-8")
    assert _reply(check_sender, "\udcff@outside.test") == (
        "553 5.1.7 the sender address is not valid UTF-8")
    assert _reply(check_recipient_address, "\udcff@example.test") == (
        "501 5.1.3 the recipient address is not valid UTF-8")
    check_helo("mail.example.test")
    check_sender("ünï@outside.test")
    check_recipient_address("team@example.test")


def _framed(raw: bytes) -> None:
    check_framed(raw, headers.split_message(raw)[0])


@pytest.mark.parametrize(("raw", "reason"), [
    (b"", "empty message"), (b"\r\n \r\n", "empty message"),
    (b"Subject: a\0b\r\n\r\nbody\r\n", "NUL byte in the header section"),
    (b"just a body line\r\nSubject: late\r\n\r\n", "does not start with a header field"),
    (b"\r\nbody after a blank line\r\n", "does not start with a header field"),
    (b"From poster@outside.test Mon Nov 30\r\nSubject: x\r\n\r\n",
     "does not start with a header field"),
])
def test_framing_refuses_what_our_fields_could_not_precede(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        _framed(raw)


def test_framing_lets_messages_through_byte_for_byte() -> None:
    _framed(make_message("team@example.test"))
    _framed(b"Subject: x\r\n\r\nNUL in the body \0 is the body's business\r\n")
    _framed(b"X-Only: a header, no body\r\n")
    with pytest.raises(MalformedMessage, match="empty message"):  # shared with HTTP/pipe
        check_well_formed(b" \r\n", b" \r\n")


# -- over a real socket ---------------------------------------------------------------------


class Client:
    """One raw SMTP/LMTP conversation: bytes out, each whole reply back as text."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")

    def reply(self) -> str:
        lines = []
        while True:
            line = self.file.readline()
            assert line, "the relay closed the connection"
            lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            if line[3:4] != b"-":
                return "\n".join(lines)

    def send(self, line: bytes) -> str:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def data(self, content: bytes) -> str:
        assert self.send(b"DATA").startswith("354")
        body = content if content.endswith(b"\r\n") or not content else content + b"\r\n"
        self.sock.sendall(body + b".\r\n")
        return self.reply()


@contextmanager
def talk(port: int) -> Iterator[Client]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        client = Client(sock)
        assert client.reply().startswith("220")
        yield client


@pytest.fixture(scope="module")
def shared(make_module_relay: Callable[..., RelayProcess]) -> RelayProcess:
    """One SMTP and LMTP relay for these tests: each posts to a list of its own, or only
    gets refusals."""
    return make_module_relay(lmtp=True).start()


@pytest.mark.parametrize("name", [
    b"evil.test\rBcc: victim@elsewhere.test\rX-Injected: yes", b"x\r\rX-Body: pushed", b"x\0y",
    b"x\x1by", "x\u0085y".encode(), b"\xff\xfe.test",
])
@pytest.mark.parametrize("verb", [b"HELO", b"EHLO"])
def test_a_helo_name_with_control_characters_is_refused_and_the_session_goes_on(
        shared: RelayProcess, verb: bytes, name: bytes) -> None:
    address, _ = shared.fresh_list(members=1)
    with talk(shared.smtp_port) as client:
        refusal = client.send(verb + b" " + name)
        assert refusal.startswith("501 5.5.2 the HELO name "), refusal
        assert client.send(b"MAIL FROM:<poster@outside.test>").startswith("503")
        assert client.send(verb + b" mail.outside.test").startswith("250")
        assert client.send(b"MAIL FROM:<poster@outside.test>").startswith("250")
        assert client.send(f"RCPT TO:<{address}>".encode()).startswith("250 2.1.5")
        assert client.data(make_message(address)).startswith("250 2.0.0")


def test_a_lhlo_name_with_control_characters_is_refused(shared: RelayProcess) -> None:
    assert shared.lmtp_port is not None
    with talk(shared.lmtp_port) as client:
        assert client.send(b"LHLO evil\rX-Injected: yes").startswith("501 5.5.2")
        assert client.send(b"LHLO mail.outside.test").startswith("250")


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "empty message"),
    (b"Subject: hello\r\nX-Evil: a\0b\r\n\r\nbody\r\n", "NUL byte in the header section"),
    (b"Body first, no header.\r\nSubject: no\r\n\r\nmore\r\n",
     "the message does not start with a header field"),
])
def test_a_message_without_a_header_section_is_refused(shared: RelayProcess, content: bytes,
                                                       reason: str) -> None:
    address, _ = shared.fresh_list(members=1)
    assert shared.lmtp_port is not None
    with talk(shared.smtp_port) as client:
        client.send(b"EHLO mail.outside.test")
        client.send(b"MAIL FROM:<poster@outside.test>")
        client.send(f"RCPT TO:<{address}>".encode())
        assert client.data(content) == f"554 5.6.0 {reason}"
    with talk(shared.lmtp_port) as client:
        client.send(b"LHLO mail.outside.test")
        client.send(b"MAIL FROM:<poster@outside.test>")
        client.send(f"RCPT TO:<{address}>".encode())
        assert client.data(content) == f"554 5.6.0 {reason}"


def test_invalid_utf8_in_the_envelope_is_refused_at_the_command(shared: RelayProcess) -> None:
    address, _ = shared.fresh_list(members=1)
    with talk(shared.smtp_port) as client:
        client.send(b"EHLO mail.outside.test")
        assert client.send(b"MAIL FROM:<\xff\xfe@outside.test> SMTPUTF8") == (
            "553 5.1.7 the sender address is not valid UTF-8")
        assert client.send(b"MAIL FROM:<poster@outside.test> SMTPUTF8").startswith("250")
        assert client.send(b"RCPT TO:<\xff\xfe@example.test>") == (
            "501 5.1.3 the recipient address is not valid UTF-8")
        assert client.send(f"RCPT TO:<{address}>".encode()).startswith("250 2.1.5")
        assert client.data(make_message(address)).startswith("250 2.0.0")
