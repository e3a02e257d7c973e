"""Auto-replies and echo addresses end to end: a running relay on SQLite and PostgreSQL,
set up with the CLI, posted to over SMTP, the replies read at the sink.

Each test uses addresses and senders of its own, so the relay and the sink are shared.
"""

from __future__ import annotations

import email.policy
import secrets
from collections.abc import Callable
from email.parser import BytesParser

import pytest

from mailflow.model import ListKind
from mailflow.services.directory import DirectoryService
from mailflow.testing.factories import make_message
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink


@pytest.fixture(scope="module")
def relay(make_module_relay: Callable[..., RelayProcess]) -> RelayProcess:
    return make_module_relay().start()


def test_an_auto_reply_reaches_the_sender_with_rfc_3834_fields(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    alias, members = relay.fresh_list(members=1, kind=ListKind.ALIAS)
    with relay.repository() as repo:  # the CLI's side: tests/test_cli.py
        DirectoryService(repo).set_autoreply(alias, body="Away until Monday, $sender.")
    sender = f"traveller-{alias.split('@')[0]}@outside.test"  # the sink is shared
    original = make_message(alias, sender=sender, subject="Planning")
    relay.post(sender, alias, original)
    arrived = module_sink.wait_for_copies([*members, sender])
    [reply] = [m for m in arrived if m.rcpt_tos == (sender,)]
    assert reply.mail_from == "<>"  # the null envelope sender: nobody answers a reply
    parsed = BytesParser(policy=email.policy.default).parsebytes(reply.content)
    request = BytesParser(policy=email.policy.default).parsebytes(original)
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["Subject"] == "Auto: Planning"
    assert parsed["From"] == alias and parsed["To"] == sender
    assert parsed["In-Reply-To"] == request["Message-ID"] == parsed["References"]
    assert parsed["Message-ID"] != request["Message-ID"] and parsed["Date"]
    assert f"Away until Monday, {sender}." in parsed.get_content()
    assert "> Hello list." in parsed.get_content()
    assert parsed["List-Id"] is None  # an alias's reply, not a post
    # Within the week: the same sender is not answered again (the member still is).
    relay.post(sender, alias, make_message(alias, sender=sender, subject="Again"))
    relay.wait_settled()
    assert len(module_sink.wait_for_copies([sender], timeout=0)) == 1
    assert len(module_sink.wait_for_copies(members, count=2)) == 2


def test_echo_answers_with_a_copy_and_two_echoes_do_not_answer_each_other(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    tag = secrets.token_hex(4)  # the sink is shared by both backends' relays
    echo_a, echo_b = f"echo-a-{tag}@example.test", f"echo-b-{tag}@example.test"
    with relay.repository() as repo:
        for address in (echo_a, echo_b):
            DirectoryService(repo).create_list(address, kind="echo")
    # A message from B to A (as if B had written to A): A echoes it back to B.
    relay.post(echo_b, echo_a, make_message(echo_a, sender=echo_b, subject="ping",
                                             body=b"echo me\r\n"))
    [echo] = module_sink.wait_for_copies([echo_b])
    assert echo.mail_from == "<>"
    parsed = BytesParser(policy=email.policy.default).parsebytes(echo.content)
    assert parsed["Auto-Submitted"] == "auto-replied" and parsed["Subject"] == "Auto: ping"
    assert echo.content.endswith(b"\r\n\r\necho me\r\n")  # the body as it came
    # B gets A's echo as the sink did: B must not answer it.
    queue_id = relay.post("", echo_b, echo.content)
    relay.wait_settled()
    with relay.repository() as repo:
        events = repo.message_events(queue_id)
    assert [d for _, kind, d in events if kind == "no_reply"] == [
        f"echo of {echo_b}: not sent, the envelope sender is empty (a bounce or "
        "notification)"]
    assert module_sink.wait_for_copies([echo_a], count=1, timeout=0) == []
