"""Auto-replies and echo addresses: the RFC 3834 decision, the reply's fields with
hostile values, the once-per-N-days rule on the fake clock and the reply log on SQLite
and PostgreSQL (through the ingest and expansion transactions), and two echo
addresses that must not answer each other."""

from __future__ import annotations

import email.policy
from email.parser import BytesParser
from pathlib import Path

import pytest

from mailflow.blobs import BlobStore, content_hash
from mailflow.errors import InvalidInput, NotFound
from mailflow.model import GENERATED, InboundMessage, ListKind, MessageStatus
from mailflow.pipeline.process.autoreply import DAY, no_reply_reason, render
from mailflow.services.commit import IngestBatch, InlineExpansion, store_batch
from mailflow.services.directory import DirectoryService
from mailflow.services.processor import expand_received
from mailflow.store import Repository
from mailflow.store.tables import messages
from mailflow.testing.clock import FakeClock
from mailflow.testing.factories import make_list, make_message

ADDRESS = "office@example.test"
SENDER = "ann@outside.test"
NOW = 1_800_000_000.0


def header(*fields: str, to: str = ADDRESS) -> bytes:
    return ("".join(f"{f}\r\n" for f in (f"To: {to}", *fields))).encode()


# -- the decision ------------------------------------------------------------------------

@pytest.mark.parametrize(("mail_from", "fields", "to", "because"), [
    ("", (), ADDRESS, "envelope sender is empty"),
    ("MAILER-DAEMON@outside.test", (), ADDRESS, "robot or role"),
    ("postmaster@outside.test", (), ADDRESS, "robot or role"),
    ("noreply@outside.test", (), ADDRESS, "robot or role"),
    ("No-Reply@outside.test", (), ADDRESS, "robot or role"),
    ("team-request@lists.test", (), ADDRESS, "list's robot"),
    ("owner-team@lists.test", (), ADDRESS, "list's robot"),
    (ADDRESS, (), ADDRESS, "the address itself"),
    (SENDER, ("Auto-Submitted: auto-replied",), ADDRESS, "Auto-Submitted: auto-replied"),
    (SENDER, ("Auto-Submitted: auto-generated; x",), ADDRESS, "Auto-Submitted: auto-generated"),
    (SENDER, ("auto-submitted:  AUTO-NOTIFIED",), ADDRESS, "Auto-Submitted: auto-notified"),
    (SENDER, ("Precedence: bulk",), ADDRESS, "Precedence: bulk"),
    (SENDER, ("Precedence: JUNK",), ADDRESS, "Precedence: junk"),
    (SENDER, ("Precedence: list",), ADDRESS, "Precedence: list"),
    (SENDER, ("List-Id: <team.lists.test>",), ADDRESS, "List-Id"),
    (SENDER, ("List-Unsubscribe: <mailto:x@lists.test>",), ADDRESS, "List-Unsubscribe"),
    (SENDER, (), "someone@example.test", "not in To or Cc"),
    (SENDER, ("Bcc: office@example.test",), "other@example.test", "not in To or Cc"),
])
def test_rfc_3834_never_answers(mail_from: str, fields: tuple[str, ...], to: str,
                                because: str) -> None:
    reason = no_reply_reason(mail_from, header(*fields, to=to), ADDRESS)
    assert reason is not None and because in reason


@pytest.mark.parametrize("fields", [
    (), ("Auto-Submitted: no",), ("Precedence: first-class",),
    ("Cc: Office <OFFICE@example.test>",),
])
def test_an_ordinary_message_is_answered(fields: tuple[str, ...]) -> None:
    to = "other@example.test" if fields and fields[0].startswith("Cc") else ADDRESS
    assert no_reply_reason(SENDER, header(*fields, to=f"Ann <{to}>"), ADDRESS) is None


def test_templates_substitute_values_and_never_break_a_line() -> None:
    text = render("Re $subject from $sender to $address ${subject}x $$ $unknown",
                  sender="a\r\nBcc: evil@x.test", subject="hi\nthere\u2028", address=ADDRESS)
    assert text == (f"Re hi?there? from a??Bcc: evil@x.test to {ADDRESS} hi?there?x $ "
                    "$unknown")


# -- through the store -------------------------------------------------------------------

@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def ingest(repo: Repository, now: float, raw: bytes, *, sender: str = SENDER,
           rcpt: str = ADDRESS, protocol: str = "ESMTP", id_: str = "") -> InboundMessage:
    digest = content_hash(raw)
    message = InboundMessage(id_ or f"m{int(now)}{sender[:3]}", sender, (rcpt,), digest,
                             len(raw), now, "127.0.0.1", "client.test", protocol)
    store_batch(repo, IngestBatch([message], {digest: raw}, {digest: raw}), now,
                lambda: None, InlineExpansion(100))
    return message


def replies(repo: Repository) -> list[tuple[InboundMessage, bytes]]:
    """The generated messages, oldest first, with their bodies (not those the test
    ingested, whose ids start with ``m``)."""
    with repo.engines.reader.connect() as conn:
        rows = conn.execute(messages.select().where(messages.c.protocol == GENERATED)
                            .order_by(messages.c.received_at)).all()
    found = []
    for row in rows:
        if row.id.startswith("m"):
            continue
        body = repo.stored_body(row.blob)
        assert body is not None
        found.append((InboundMessage(row.id, row.mail_from, tuple(row.rcpt_tos.split("\n")),
                                     row.blob, row.size, row.received_at, row.peer, row.helo,
                                     row.protocol, MessageStatus(row.status)), body))
    return found


def test_autoreply_once_per_n_days_on_the_fake_clock(repo: Repository) -> None:
    clock = FakeClock()
    make_list(repo, ADDRESS, ["boss@inside.test"], kind=ListKind.ALIAS)
    DirectoryService(repo, clock).set_autoreply(
        ADDRESS, subject="Auto: $subject", body="Away, $sender.", once_per_days=3)
    original = make_message(ADDRESS, sender=SENDER, subject="Grüße\r\nBcc: evil@x.test")
    first = ingest(repo, clock.now(), original)
    [(reply, content)] = replies(repo)
    assert (reply.mail_from, reply.rcpt_tos, reply.status) == ("", (SENDER,),
                                                              MessageStatus.QUEUED)
    rows = {(r.message_id, r.recipient, r.status) for r in repo.list_deliveries(100)}
    assert rows == {(first.id, "boss@inside.test", "queued"), (reply.id, SENDER, "queued")}
    parsed = BytesParser(policy=email.policy.default).parsebytes(content)
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["To"] == SENDER and parsed["From"] == ADDRESS
    assert parsed["Bcc"] is None  # the CR LF in the original subject did not start a field
    assert str(parsed["Subject"]).startswith("Auto: Grüße")
    assert b"=?utf-8?" in content.split(b"\r\n\r\n")[0]  # non-ASCII encoded, RFC 2047
    original_id = BytesParser(policy=email.policy.default).parsebytes(original)["Message-ID"]
    assert parsed["In-Reply-To"] == original_id and parsed["References"] == original_id
    assert parsed["Message-ID"] and parsed["Date"]
    text = parsed.get_content()
    assert f"Away, {SENDER}." in text and "> Hello list." in text

    clock.advance(3 * DAY - 60)  # within the interval: not again
    ingest(repo, clock.now(), make_message(ADDRESS, sender=SENDER, subject="again"))
    ingest(repo, clock.now(), make_message(ADDRESS, sender="cat@outside.test"),
           sender="cat@outside.test")  # another sender is answered
    assert [r.rcpt_tos for r, _ in replies(repo)] == [(SENDER,), ("cat@outside.test",)]
    clock.advance(120)  # the interval is over; the log survived (it is in the store)
    expansion_ingest = make_message(ADDRESS, sender=SENDER, subject="third")
    ingest(repo, clock.now(), expansion_ingest)
    assert [r.rcpt_tos for r, _ in replies(repo)] == [(SENDER,), ("cat@outside.test",),
                                                      (SENDER,)]
    assert repo.last_reply(ADDRESS, SENDER) == clock.now()


def test_the_processor_replies_to_what_the_ingest_left(repo: Repository,
                                                       blobs: BlobStore) -> None:
    """A message left ``received`` (its body in a blob file) is answered by the
    processor, and a period that has not begun yet sends nothing."""
    clock = FakeClock()
    make_list(repo, ADDRESS, kind=ListKind.ALIAS)
    DirectoryService(repo, clock).set_autoreply(ADDRESS, body="Away.",
                                                starts="2030-01-01", ends="2030-01-02")
    raw = make_message(ADDRESS, sender=SENDER)
    digest = content_hash(raw)
    blobs.write_many([(digest, raw)])
    early = InboundMessage("early", SENDER, (ADDRESS,), digest, len(raw), clock.now(), "", "",
                           "ESMTP")
    store_batch(repo, IngestBatch([early]), clock.now(), lambda: None)
    assert expand_received(repo, clock.now(), 10, read_file=blobs.read) == 1
    assert replies(repo) == []
    starts = DirectoryService(repo).get_autoreply(ADDRESS)
    assert starts is not None and starts.starts_at is not None
    later = InboundMessage("later", SENDER, (ADDRESS,), digest, len(raw),
                           starts.starts_at + 60, "", "", "ESMTP")
    store_batch(repo, IngestBatch([later]), starts.starts_at + 60, lambda: None)
    assert expand_received(repo, starts.starts_at + 60, 10, read_file=blobs.read) == 1
    assert [r.rcpt_tos for r, _ in replies(repo)] == [(SENDER,)]
    assert any(kind == "replied" for _, kind, _ in repo.message_events("later"))


def test_a_message_left_by_the_ingest_is_answered_once(repo: Repository) -> None:
    """Inline, a message whose deliveries do not fit is skipped after the steps ran:
    neither its reply nor its log entry may be stored then, or the processor, running
    the steps again, would find the sender answered and send nothing."""
    make_list(repo, ADDRESS, ["a@inside.test", "b@inside.test"], kind=ListKind.ALIAS)
    DirectoryService(repo).set_autoreply(ADDRESS, body="Away.")
    raw = make_message(ADDRESS, sender=SENDER)
    digest = content_hash(raw)
    message = InboundMessage("big", SENDER, (ADDRESS,), digest, len(raw), NOW, "", "",
                             "ESMTP")
    stored = store_batch(repo, IngestBatch([message], {digest: raw}, {digest: raw}), NOW,
                         lambda: None, InlineExpansion(max_rows=2))
    assert stored.left == 1 and replies(repo) == []
    assert repo.last_reply(ADDRESS, SENDER) is None
    assert expand_received(repo, NOW + 1, 10) == 1
    assert [r.rcpt_tos for r, _ in replies(repo)] == [(SENDER,)]
    assert repo.last_reply(ADDRESS, SENDER) == NOW + 1


def test_two_echo_addresses_exchange_one_message(repo: Repository) -> None:
    """A's echo of B's message goes to B; B does not answer it, whichever envelope
    sender it arrives with (null as sent, or rewritten to A by some forwarder)."""
    clock = FakeClock()
    a, b = "echo-a@example.test", "echo-b@example.test"
    make_list(repo, a, kind=ListKind.ECHO)
    make_list(repo, b, kind=ListKind.ECHO)
    ingest(repo, clock.now(), make_message(a, sender=b, subject="ping"), sender=b, rcpt=a)
    [(echo, content)] = replies(repo)
    assert echo.rcpt_tos == (b,) and b"Auto-Submitted: auto-replied" in content
    assert content.endswith(b"\r\n\r\nHello list.\r\n")
    for mail_from in ("", a):
        clock.advance(1)
        ingest(repo, clock.now(), content, sender=mail_from, rcpt=b)
        assert len(replies(repo)) == 1
    # Our own reply handed back to the chain is not answered either.
    clock.advance(1)
    ingest(repo, clock.now(), content, sender=a, rcpt=b, protocol=GENERATED)
    assert len(replies(repo)) == 1


def test_the_directory_validates_replies(repo: Repository) -> None:
    directory = DirectoryService(repo)
    make_list(repo, ADDRESS, kind=ListKind.ALIAS)
    make_list(repo, "echo@example.test", kind=ListKind.ECHO)
    bad = [
        {"subject": "Away\r\nBcc: evil@x.test"},
        {"subject": "Away $name"},
        {"subject": "100$"},
        {"body": "x" * 10_001},
        {"starts": "tomorrow"},
        {"starts": "2026-12-24", "ends": "2026-12-24"},
        {"once_per_days": 0},
    ]
    for values in bad:
        with pytest.raises(InvalidInput):
            directory.set_autoreply(ADDRESS, **{"body": "Away.", **values})  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="echo address"):
        directory.set_autoreply("echo@example.test", body="x")
    with pytest.raises(NotFound):
        directory.set_autoreply("nobody@example.test", body="x")
    directory.set_autoreply(ADDRESS, body="first")
    set_ = directory.set_autoreply(ADDRESS, body="Line one\nline two", ends="2026-12-24T09:00")
    assert directory.get_autoreply(ADDRESS) == set_  # replaced
    assert directory.clear_autoreply(ADDRESS) and directory.get_autoreply(ADDRESS) is None
    assert not directory.clear_autoreply(ADDRESS)


def test_a_hostile_envelope_sender_reaches_no_header_field(repo: Repository) -> None:
    make_list(repo, ADDRESS, kind=ListKind.ALIAS)
    DirectoryService(repo).set_autoreply(ADDRESS, subject="Re: $sender", body="$sender")
    hostile = "x\r\nBcc: evil@x.test\r\n@outside.test"
    ingest(repo, NOW, make_message(ADDRESS, subject="a\rb"), sender=hostile)
    [(_, content)] = replies(repo)
    fields = content.split(b"\r\n\r\n")[0]
    assert b"\nBcc" not in fields and b"\r" not in fields.replace(b"\r\n", b"")
    assert BytesParser(policy=email.policy.default).parsebytes(content)["Bcc"] is None
