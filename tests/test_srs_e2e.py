"""SRS and failure notices end to end: a running relay (with its child process) on
SQLite and PostgreSQL, a sink as the next hop for every domain, SMTP clients.

Each test uses aliases of its own, so the relay is shared.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable

import pytest

from mailflow.model import ListKind
from mailflow.testing.factories import make_message
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink


@pytest.fixture(scope="module")
def relay(make_module_relay: Callable[..., RelayProcess]) -> RelayProcess:
    return make_module_relay().start()


def rcpt_reply(relay: RelayProcess, sender: str, recipient: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail(sender)
        return client.rcpt(recipient)


def test_forward_gets_an_srs_sender_and_a_bounce_to_it_reaches_the_original_sender(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    alias, (target,) = relay.fresh_list(members=1, kind=ListKind.ALIAS)
    original = f"alice.{alias.partition('@')[0]}@origin.example"
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.sendmail(original, [alias], make_message(alias, sender=original))
    (forwarded,) = module_sink.wait_for_copies([target])
    srs_sender = forwarded.mail_from
    assert srs_sender.startswith("SRS0=")
    assert srs_sender.endswith(f"=origin.example={original.partition('@')[0]}@example.test")

    # The destination bounces to the SRS address (in another case, as relays may):
    # the bounce is taken and relayed to the original sender, with the null sender.
    bounce = make_message(srs_sender, sender="MAILER-DAEMON@members.test")
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.sendmail("", [srs_sender.lower()], bounce)
    (relayed,) = module_sink.wait_for_copies([original])
    assert relayed.mail_from == "<>"  # aiosmtpd keeps the null sender so
    assert relayed.rcpt_tos == (original,)

    # A forged hash and a malformed address are refused at RCPT; so is an SRS address
    # of a domain the relay does not serve (not ours to judge).
    tag, hash_, rest = srs_sender.split("=", 2)
    forged = f"{tag}={'A' if hash_[0] != 'A' else 'B'}{hash_[1:]}={rest}"
    code, text = rcpt_reply(relay, "", forged)
    assert (code, text.split()[0]) == (550, b"5.1.7"), text
    assert b"hash" in text
    code, text = rcpt_reply(relay, "", "SRS0=xx@example.test")
    assert (code, text.split()[0]) == (550, b"5.1.7"), text
    assert rcpt_reply(relay, "", srs_sender.replace("example.test", "other.test"))[0] == 550
