"""Aliases end to end over SMTP, on SQLite and PostgreSQL: a plus-tagged recipient of an
alias forwarding in the ``fwd`` style, and two aliases pointed at each other.

The relay's route for its own domain is its own SMTP listener, so a copy for a local
alias comes back in as mail from outside would (expansion does not recurse into local
aliases: each target is sent through the egress).
"""

from __future__ import annotations

import base64
import email
import os
import smtplib
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import default as default_policy

from mailflow.model import ListKind
from mailflow.services.directory import DirectoryService
from mailflow.testing.factories import make_list
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink

ATTACHMENT = os.urandom(2000)
ENCODED = base64.encodebytes(ATTACHMENT).replace(b"\n", b"\r\n").rstrip(b"\r\n")
MIXED = (b"From: Ann <ann@outside.test>\r\nTo: info+news@example.test\r\n"
         b"Subject: =?utf-8?q?Files=0D=0ABcc:_x@evil.test?=\r\nMIME-Version: 1.0\r\n"
         b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n"
         b"Content-Type: text/plain\r\n\r\nSee attached.\r\n--b\r\n"
         b"Content-Type: application/octet-stream; name=\"f.bin\"\r\n"
         b"Content-Transfer-Encoding: base64\r\n\r\n" + ENCODED + b"\r\n--b--\r\n")


def test_plus_tags_fwd_style_and_a_two_alias_loop(make_relay: Callable[..., RelayProcess],
                                                  sink: SmtpSink) -> None:
    relay = make_relay()
    relay.env["MAILFLOW_ROUTES"] = f"example.test=smtp://127.0.0.1:{relay.smtp_port}"
    with relay.repository() as repo:
        make_list(repo, "info@example.test", ["reader@members.test"], kind=ListKind.ALIAS)
        make_list(repo, "loop-a@example.test", ["loop-b@example.test"], kind=ListKind.ALIAS)
        make_list(repo, "loop-b@example.test", ["loop-a@example.test"], kind=ListKind.ALIAS)
        directory = DirectoryService(repo)
        directory.update_list("info@example.test", forward_style="fwd")
        directory.update_list("loop-a@example.test", forward_style="fwd")
    relay.start()

    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("ann@outside.test")
        assert client.rcpt("info+bad!tag@example.test") == (
            550, b"5.1.1 no list or alias <info+bad!tag@example.test> here")
        client.rset()
        assert client.sendmail("ann@outside.test", ["Info+News@example.test"], MIXED) == {}
        assert client.sendmail("ann@outside.test", ["loop-a@example.test"],
                               b"From: ann@outside.test\r\nSubject: round\r\n\r\nhi\r\n") == {}

    [copy] = sink.wait_for_copies(["reader@members.test"])
    out = email.message_from_bytes(copy.content, policy=default_policy)
    assert isinstance(out, EmailMessage)
    assert out["X-MailFlow-Tag"] == "news"
    assert out["Subject"] == "Fwd: Files Bcc: x@evil.test" and out["Bcc"] is None
    attachment = [p for p in out.walk() if p.get_filename() == "f.bin"]
    assert attachment[0].get_payload(decode=True) == ATTACHMENT
    assert ENCODED in copy.content

    # loop-a -> loop-b is delivered (through our own listener); loop-b -> loop-a comes
    # back with loop-a's marker (carried by the fwd rendering) and is refused.
    relay.wait_settled(timeout=20)
    with relay.repository() as repo:
        rows = {r.recipient: r for r in repo.list_deliveries(100)}
    assert rows["loop-b@example.test"].status == "delivered"
    refused = rows["loop-a@example.test"]
    assert refused.status == "failed"
    assert "mail loop" in (refused.last_reply or "")
    assert "loop-a@example.test" in (refused.last_reply or "")
