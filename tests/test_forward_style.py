"""The ``fwd`` forward style and plus tags in the send chain, without a process.

Attachments are compared twice: their decoded bytes, and their encoded bytes as they
stand in the message (the Content-Transfer-Encoding and every encoded line unchanged).
"""

from __future__ import annotations

import base64
import email
import os
import quopri
from email.message import EmailMessage, Message
from email.policy import default as default_policy

import pytest

from mailflow import headers
from mailflow.errors import LoopDetected
from mailflow.model import Envelope, ForwardStyle, InboundMessage, ListKind, MailingList
from mailflow.pipeline.accept.loops import NotLooping
from mailflow.pipeline.chain import render_copy, rendering_variant
from mailflow.pipeline.context import Identity, MessageContext
from mailflow.pipeline.send.forward import VALUE_MAX_LENGTH
from mailflow.pipeline.send.tag import copy_tag

IDENTITY = Identity("abc", "relay.test")
FWD = MailingList(8, "info@example.test", ListKind.ALIAS, "Info desk", 0, 0.0,
                  ForwardStyle.FWD)
RESEND = MailingList(8, "info@example.test", ListKind.ALIAS, "", 0, 0.0)

PDF = os.urandom(3000) + b"\x00\xff" * 50
PDF_B64 = base64.encodebytes(PDF).replace(b"\n", b"\r\n")  # 76-character lines
NOTE = "Zürich naïve café ".encode() * 40
NOTE_QP = quopri.encodestring(NOTE).replace(b"\n", b"\r\n")
PART_TEXT = b"Content-Type: text/plain; charset=us-ascii\r\n\r\nSee the files.\r\n"
PART_PDF = (b"Content-Type: application/pdf; name=\"a.pdf\"\r\n"
            b"Content-Disposition: attachment; filename=\"a.pdf\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + PDF_B64.rstrip(b"\r\n"))
PART_NOTE = (b"Content-Type: text/plain; charset=utf-8; name=\"note.txt\"\r\n"
             b"Content-Disposition: attachment; filename=\"note.txt\"\r\n"
             b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + NOTE_QP.rstrip(b"\r\n"))
MIXED = (b"From: Ann Example <ann@x.test>\r\nTo: info@example.test\r\n"
         b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\nSubject: Quarterly files\r\n"
         b"Message-ID: <orig@x.test>\r\nMIME-Version: 1.0\r\n"
         b"Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n"
         b"This is a multi-part message.\r\n"
         b"--outer\r\n" + PART_TEXT + b"\r\n--outer\r\n" + PART_PDF + b"\r\n--outer\r\n"
         + PART_NOTE + b"\r\n--outer--\r\n")


def message(*rcpts: str) -> InboundMessage:
    return InboundMessage("q1", "ann@x.test", rcpts or ("info@example.test",), "h", 0,
                          1_800_000_000.0, "127.0.0.1", "client.test", "ESMTP")


def parse(raw: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(raw, policy=default_policy)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_fwd_rewraps_a_mixed_message_with_byte_identical_attachments() -> None:
    rendered = render_copy(MIXED, message(), FWD, IDENTITY)
    out = parse(rendered)
    assert str(out["Subject"]) == "Fwd: Quarterly files"
    assert str(out["From"]) == "Info desk <info@example.test>"
    assert str(out["Reply-To"]) == "Ann Example <ann@x.test>"
    assert out.get_content_type() == "multipart/mixed"
    assert out.defects == [] and all(not p.defects for p in out.walk())
    parts = list(out.iter_parts())
    intro = parts[0].get_content()
    assert intro.splitlines()[1:5] == [
        "From: Ann Example <ann@x.test>", "Date: Mon, 01 Jan 2024 10:00:00 +0000",
        "Subject: Quarterly files", "To: info@example.test"]
    assert [p.get_filename() for p in parts[1:]] == [None, "a.pdf", "note.txt"]
    # Decoded bytes, and the encoding, as sent.
    assert parts[2].get_payload(decode=True) == PDF
    assert parts[3].get_payload(decode=True) == NOTE
    assert [p["Content-Transfer-Encoding"] for p in parts[2:]] == ["base64",
                                                                  "quoted-printable"]
    # Encoded bytes: each original part stands in the copy exactly as it was received.
    for part in (PART_TEXT, PART_PDF, PART_NOTE):
        assert b"\r\n" + part + b"\r\n--mailflow-fwd-" in rendered
    # Our trace fields are on the new message; the tag step still runs after the swap.
    header, _ = headers.split_message(rendered)
    assert headers.field_values(header, "X-MailFlow-Loop") == ["abc; info@example.test"]
    assert headers.count_fields(header, "Message-ID") == 1


def test_resend_style_and_lists_keep_the_message_as_it_is() -> None:
    assert render_copy(MIXED, message(), RESEND, IDENTITY).endswith(MIXED)
    a_list = MailingList(7, "team@example.test", ListKind.LIST, "", 0, 0.0, ForwardStyle.FWD)
    assert render_copy(MIXED, message("team@example.test"), a_list, IDENTITY).endswith(
        MIXED.split(b"\r\n", 1)[1])  # List-* fields added, the original after them
    assert rendering_variant(FWD) != rendering_variant(RESEND)


SIGNED = (b"From: ann@x.test\r\nTo: info@example.test\r\nSubject: signed\r\n"
          b"MIME-Version: 1.0\r\nContent-Type: multipart/signed; micalg=pgp-sha256;\r\n"
          b" protocol=\"application/pgp-signature\"; boundary=\"sig\"\r\n\r\n"
          b"--sig\r\nContent-Type: text/plain\r\n\r\nsigned text\r\n"
          b"--sig\r\nContent-Type: application/pgp-signature\r\n\r\n"
          b"-----BEGIN PGP SIGNATURE-----\r\nAAAA\r\n-----END PGP SIGNATURE-----\r\n"
          b"--sig--\r\n")
DKIM = (b"DKIM-Signature: v=1; a=rsa-sha256; d=x.test; s=s; bh=abc; b=def\r\n"
        b"From: ann@x.test\r\nSubject: dkim\r\n\r\nbody signed by x.test\r\n")
SMIME = (b"From: ann@x.test\r\nSubject: sealed\r\nMIME-Version: 1.0\r\n"
         b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n"
         b"Content-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHA6CAMIACAQAx\r\n")
BROKEN = (b"From: ann@x.test\r\nSubject: cut\r\nContent-Type: multipart/mixed; "
          b"boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nno end\r\n")


@pytest.mark.parametrize("raw", [SIGNED, DKIM, SMIME, BROKEN],
                         ids=["pgp-mime", "dkim", "s-mime", "no-closing-boundary"])
def test_what_cannot_be_cut_apart_goes_whole_as_message_rfc822(raw: bytes) -> None:
    rendered = render_copy(raw, message(), FWD, IDENTITY)
    out = parse(rendered)
    parts = list(out.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/rfc822"]
    # The original, every byte, inside the attachment.
    assert b"\r\n\r\n" + raw + b"\r\n--mailflow-fwd-" in rendered
    inner = parts[1].get_content()
    assert isinstance(inner, Message)
    assert str(out["Subject"]) == f"Fwd: {inner['Subject']}"


@pytest.mark.parametrize("subject", [
    b"=?utf-8?q?Hello=0D=0ABcc:_victim@evil.test?=",
    b"=?utf-8?b?" + base64.b64encode(b"a\rX-Injected: 1\nBcc: v@evil.test") + b"?=",
    b"Hello\r\n\tBcc: folded-but-harmless@evil.test",
    ("caf\u00e9 \u00fcber " * 300).encode(),  # raw UTF-8, very long
])
def test_a_hostile_subject_cannot_add_a_field(subject: bytes) -> None:
    raw = (b"From: ann@x.test\r\nTo: info@example.test\r\nSubject: " + subject
           + b"\r\n\r\nbody\r\n")
    rendered = render_copy(raw, message(), FWD, IDENTITY)
    header, _ = headers.split_message(rendered)
    names = [name for _, name in headers.iter_fields(header)]
    assert b"bcc" not in names and b"x-injected" not in names
    assert names.count(b"subject") == 1
    assert header.isascii()  # encoded words, not raw UTF-8
    assert max(len(line) for line in header.split(b"\r\n")) <= 78
    assert header.replace(b"\r\n", b"").count(b"\r") == 0
    assert b"\n" not in header.replace(b"\r\n", b"")
    out = parse(rendered)
    decoded = str(out["Subject"])
    assert decoded.startswith("Fwd: ") and "\r" not in decoded and "\n" not in decoded
    assert len(decoded) <= len("Fwd: ") + VALUE_MAX_LENGTH


def test_a_plain_message_with_bare_line_feeds_keeps_them() -> None:
    raw = b"From: ann@x.test\nSubject: Fwd: again\n\nline one\nline two\n"
    rendered = render_copy(raw, message(), FWD, IDENTITY)
    assert b"\r" not in rendered
    out = parse(rendered)
    assert str(out["Subject"]) == "Fwd: again"  # no "Fwd: Fwd:"
    parts = list(out.iter_parts())
    assert parts[1].get_content() == "line one\nline two\n"


async def test_a_chain_a_to_b_to_a_ends_at_a_whatever_the_style() -> None:
    """A forwards (fwd) to B, B resends to A: A's marker came along and refuses it."""
    alias_b = MailingList(9, "b@example.test", ListKind.ALIAS, "", 0, 0.0)
    through_a = render_copy(MIXED, message(), FWD, IDENTITY)
    through_b = render_copy(through_a, message("b@example.test"), alias_b, IDENTITY)
    for address in ("info@example.test", "info+news@example.test"):
        ctx = MessageContext.of(Envelope("ann@x.test", (address,)), through_b)
        decided = await NotLooping("abc")(ctx, list(ctx.recipients.values()))
        error = decided[address].error
        assert isinstance(error, LoopDetected)
        assert "info@example.test" in str(error)


def test_the_tag_a_copy_was_reached_by() -> None:
    assert copy_tag(("Info+News@example.test",), "info@example.test") == "news"
    assert copy_tag(("x@y.test", "info+a@example.test", "info+b@example.test"),
                    "info@example.test") == "a"
    assert copy_tag(("info+a@example.test", "info@example.test"), "info@example.test") == ""
    assert copy_tag(("info+a b@example.test",), "info@example.test") == ""
    raw = b"X-MailFlow-Tag: forged\r\nFrom: ann@x.test\r\n\r\nbody\r\n"
    tagged = render_copy(raw, message("info+news@example.test"), RESEND, IDENTITY)
    header, _ = headers.split_message(tagged)
    assert headers.field_values(header, "X-MailFlow-Tag") == ["news"]
    plain = render_copy(raw, message(), RESEND, IDENTITY)
    assert headers.field_values(headers.split_message(plain)[0], "X-MailFlow-Tag") == []
