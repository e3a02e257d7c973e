"""List decoration, unit by unit: the fixture set of real-world-shaped messages in
``tests/messages`` rendered through the send chain for a decorated list, subject
prefixes, Reply-To, the List-* fields with and without a member, and the templates'
sandbox."""

from __future__ import annotations

import email
import re
from email.message import EmailMessage, Message
from email.policy import default as default_policy
from pathlib import Path

import pytest

from mailflow import headers
from mailflow.model import Decoration, InboundMessage, ListKind, MailingList, Member, MemberStatus
from mailflow.pipeline.chain import render_copy, rendering_variant
from mailflow.pipeline.context import Identity
from mailflow.pipeline.send import templates
from mailflow.pipeline.send.list_headers import list_fields
from mailflow.pipeline.send.subject_prefix import decoded_subject, prefixed
from mailflow.unsubscribe_tokens import BadToken, UnsubscribeTokens

MESSAGES = sorted((Path(__file__).parent / "messages").glob("*.eml"))
TOKENS = UnsubscribeTokens("test-secret")
IDENTITY = Identity("abc", "relay.test", "https://lists.example.test", TOKENS)
FOOTER = ("-- \n{{ list.name }} <{{ list.address }}>"
          "{% if member.name %} for {{ member.name }}{% endif %}\n"
          "Leave: {{ unsubscribe_url }}\n")
HEADER = "[{{ list.id }}]"
FOOTER_MARK = "Leave: https://lists.example.test/lists/team@example.test"
HEADER_MARK = "[team.example.test]"
ANN = Member(7, "ann@members.test", MemberStatus.ACTIVE, 0.0, "Ann")


def team(**decoration: str) -> MailingList:
    return MailingList(7, "team@example.test", ListKind.LIST, "Team", 0, 0.0,
                       decoration=Decoration(**decoration))


def message(raw: bytes) -> InboundMessage:
    return InboundMessage("q1", "ann@example.net", ("team@example.test",), "h", len(raw),
                          1_800_000_000.0, "127.0.0.1", "client.test", "ESMTP")


def render(raw: bytes, mailing_list: MailingList, member: Member | None = None) -> bytes:
    return render_copy(raw, message(raw), mailing_list, IDENTITY, member=member)


def parsed(raw: bytes) -> EmailMessage:
    result = email.message_from_bytes(raw, policy=default_policy)
    assert isinstance(result, EmailMessage)
    return result


def shown_texts(msg: Message) -> list[str]:
    """The decoded text of every text/plain and text/html leaf that is not an attachment
    (inside signed or encrypted parts too: they must not change)."""
    return [_tagless(content(part)) if part.get_content_type() == "text/html"
            else content(part) for part in msg.walk()
            if part.get_content_type() in ("text/plain", "text/html")
            and part.get_content_disposition() != "attachment"]


def _tagless(html: str) -> str:
    """HTML as the text a reader sees of it (enough for these fixtures)."""
    return re.sub(r"<[^>]*>", "", html)


def content(part: Message) -> str:
    """A part's decoded text, line breaks as ``\n``."""
    assert isinstance(part, EmailMessage)
    return str(part.get_content()).replace("\r\n", "\n")


def attachments(raw: bytes) -> list[bytes]:
    """The encoded bytes of every attachment and every signed or encrypted entity."""
    msg = parsed(raw)
    found = []
    for part in msg.walk():
        if part.get_content_disposition() == "attachment":
            found.append(part.get_payload(decode=False).encode("latin-1"))
    for boundary in re.findall(rb'multipart/(?:signed|encrypted);[^\r\n]*boundary="([^"]+)"',
                               raw):
        start = raw.index(b"--" + boundary + b"\r\n")
        end = raw.index(b"--" + boundary + b"--") + len(boundary) + 4
        found.append(raw[start:end])
    return found


@pytest.mark.parametrize("path", MESSAGES, ids=lambda p: p.stem)
def test_each_fixture_is_decorated_once_and_keeps_its_attachments(path: Path) -> None:
    raw = path.read_bytes()
    decorated = team(subject_prefix="[team]", header_template=HEADER, footer_template=FOOTER)
    copy = render(raw, decorated)

    result = parsed(copy)
    assert not result.defects
    texts = "\n".join(shown_texts(result))
    assert texts.count(FOOTER_MARK) >= 1 and texts.count(HEADER_MARK) >= 1
    for text in shown_texts(result):  # each decorated part: once
        assert text.count(FOOTER_MARK) <= 1 and text.count(HEADER_MARK) <= 1
    original_texts = shown_texts(parsed(raw))
    for original in original_texts:  # every original line is still shown
        assert any(all(line in text for line in original.splitlines())
                   for text in shown_texts(result))
    for kept in attachments(raw):
        assert kept in copy
    subject = decoded_subject(str(result["Subject"]))
    assert subject.startswith("[team] ") or "[team]" in decoded_subject(
        str(parsed(raw)["Subject"]))
    assert subject.count("[team]") == 1


def test_a_text_part_keeps_its_charset_and_transfer_encoding() -> None:
    raw = (Path(__file__).parent / "messages" / "utf8_base64.eml").read_bytes()
    copy = render(raw, team(footer_template="-- \nÉquipe ✓"))
    result = parsed(copy)
    assert result.get_content_type() == "text/plain"
    assert result["Content-Transfer-Encoding"] == "base64"
    assert content(result) == "Привет, мир!\n-- \nÉquipe ✓\n"
    raw = (Path(__file__).parent / "messages" / "latin1.eml").read_bytes()
    result = parsed(render(raw, team(footer_template="-- \nÉquipe")))
    assert (result.get_content_charset(), result["Content-Transfer-Encoding"]) == (
        "iso-8859-1", "quoted-printable")
    assert content(result) == "La réunion est décalée à jeudi.\n-- \nÉquipe\n"


def test_a_footer_the_charset_cannot_hold_goes_into_a_part_of_its_own() -> None:
    raw = (Path(__file__).parent / "messages" / "latin1.eml").read_bytes()
    result = parsed(render(raw, team(footer_template="Ομάδα")))
    assert result.get_content_type() == "multipart/mixed"
    first, footer = result.get_payload()  # type: ignore[misc]
    assert content(first) == "La réunion est décalée à jeudi.\n"
    assert content(footer) == "Ομάδα\n"


def test_both_alternatives_are_decorated_and_html_is_escaped() -> None:
    raw = (Path(__file__).parent / "messages" / "alternative.eml").read_bytes()
    result = parsed(render(raw, team(footer_template="-- \n<b>{{ list.name }}</b> & co")))
    plain, html = result.get_payload()  # type: ignore[misc]
    assert content(plain).endswith("-- \n<b>Team</b> & co\n")
    assert "&lt;b&gt;Team&lt;/b&gt; &amp; co</div>\n</body>" in content(html)


def test_a_signed_message_is_wrapped_never_changed_inside() -> None:
    raw = (Path(__file__).parent / "messages" / "signed.eml").read_bytes()
    copy = render(raw, team(footer_template="footer"))
    result = parsed(copy)
    assert result.get_content_type() == "multipart/mixed"
    signed, footer = result.get_payload()  # type: ignore[misc]
    assert signed.get_content_type() == "multipart/signed"
    assert content(footer) == "footer\n"
    body = headers.split_message(raw)[1]
    assert body.strip() in copy  # the signed entity's body, byte for byte


def test_an_undecorated_list_copy_keeps_every_original_byte() -> None:
    for path in MESSAGES:
        raw = path.read_bytes()
        assert render(raw, team()).endswith(raw)
    raw = MESSAGES[0].read_bytes()
    alias = MailingList(8, "info@example.test", ListKind.ALIAS, "", 0, 0.0,
                        decoration=Decoration(subject_prefix="[x]", footer_template="f"))
    assert render(raw, alias).endswith(raw)


def test_the_rendering_variant_changes_with_the_decoration() -> None:
    assert rendering_variant(team()) != rendering_variant(team(footer_template="f"))
    assert rendering_variant(team(footer_template="f")) == rendering_variant(
        team(footer_template="f"))


@pytest.mark.parametrize(("subject", "expected"), [
    (b"hello", "[team] hello"),
    (b"Re: [team] hello", "Re: [team] hello"),
    (b"RE:  [TEAM]\r\n  hello", "RE: [TEAM] hello"),
    (b"=?iso-8859-1?q?R=E9union?=", "[team] Réunion"),
    (b"=?utf-8?q?Re=3A_=5Bteam=5D_caf=C3=A9?=", "Re: [team] café"),
])
def test_the_subject_prefix_is_added_once(subject: bytes, expected: str) -> None:
    header = b"From: a@x.test\r\nSubject: " + subject + b"\r\nTo: b@x.test\r\n"
    once = prefixed(header, "[team]")
    assert prefixed(once, "[team]") == once
    [value] = headers.field_values(once, "Subject")
    assert " ".join(decoded_subject(value).split()) == expected
    assert once.startswith(b"From: a@x.test\r\nSubject: ") and once.endswith(b"To: b@x.test\r\n")


def test_a_prefix_that_is_not_ascii_is_encoded() -> None:
    once = prefixed(b"Subject: =?iso-8859-1?q?caf=E9?=\r\n", "[équipe]")
    assert once.isascii()
    [value] = headers.field_values(once, "Subject")
    assert decoded_subject(value) == "[équipe] café"
    assert prefixed(b"To: x@y.test\r\n", "[t]") == b"To: x@y.test\r\nSubject: [t]\r\n"


@pytest.mark.parametrize(("policy", "expected"), [
    ("list", b"Reply-To: team@example.test\r\n"),
    ("help@example.test", b"Reply-To: help@example.test\r\n"),
])
def test_reply_to_policy(policy: str, expected: bytes) -> None:
    raw = b"From: a@x.test\r\nReply-To: a@elsewhere.test\r\nSubject: s\r\n\r\nbody\r\n"
    copy = render(raw, team(reply_to=policy))
    assert expected in copy and b"a@elsewhere.test" not in copy
    assert b"Reply-To: a@elsewhere.test" in render(raw, team(subject_prefix="[t]"))


def test_list_fields_of_a_shared_copy() -> None:
    fields = list_fields(team(archive_url="https://archive.example.test/team"), IDENTITY)
    assert fields == [
        'List-Id: "Team" <team.example.test>',
        "List-Post: <mailto:team@example.test>",
        "List-Help: <mailto:team-request@example.test?subject=help>",
        "List-Subscribe: <mailto:team-join@example.test>,\n"
        " <https://lists.example.test/lists/team@example.test>",
        "List-Unsubscribe: <mailto:team-leave@example.test>,\n"
        " <https://lists.example.test/lists/team@example.test>",
        "List-Archive: <https://archive.example.test/team>",
        "Precedence: list"]


def test_list_fields_of_a_member_copy_carry_a_one_click_url() -> None:
    fields = list_fields(team(), IDENTITY, "Ann@Members.test")
    unsubscribe = next(f for f in fields if f.startswith("List-Unsubscribe:"))
    url = re.search(r"<(https://[^>]+)>", unsubscribe)
    assert url is not None and unsubscribe.endswith("<mailto:team-leave@example.test>")
    prefix = "https://lists.example.test/lists/team@example.test/unsubscribe/"
    assert url.group(1).startswith(prefix)
    assert TOKENS.member("team@example.test", url.group(1)[len(prefix):]) == \
        "ann@members.test"
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in fields
    without_url = list_fields(team(), Identity("abc", "relay.test"), "ann@members.test")
    assert not any("https" in f or "One-Click" in f for f in without_url)


def test_a_member_copy_footer_names_the_member_and_its_link() -> None:
    raw = MESSAGES[0].read_bytes()
    copy = render(raw, team(footer_template=FOOTER), member=ANN)
    text = "\n".join(shown_texts(parsed(copy)))
    assert "Team <team@example.test> for Ann" in text
    assert re.search(r"Leave: https://lists\.example\.test/lists/team@example\.test/"
                     r"unsubscribe/\S+", text)


def test_tokens_refuse_forgery_and_other_lists() -> None:
    token = TOKENS.token("team@example.test", "ann@members.test")
    assert TOKENS.member("team@example.test", token.upper().replace(
        token.split(".")[0].upper(), token.split(".")[0])) == "ann@members.test"
    for bad in (token[:-1] + ("a" if token[-1] != "a" else "b"), "x", "", "a.b",
                TOKENS.token("team@example.test", "ben@members.test").split(".")[0]
                + "." + token.split(".")[1]):
        with pytest.raises(BadToken):
            TOKENS.member("team@example.test", bad)
    with pytest.raises(BadToken):
        TOKENS.member("other@example.test", token)
    rotated = UnsubscribeTokens("new-secret", ("test-secret",))
    assert rotated.member("team@example.test", token) == "ann@members.test"


@pytest.mark.parametrize(("source", "why"), [
    ("{{ list.__class__ }}", "unsafe"),
    ("{{ ''.__class__.__mro__ }}", "unsafe"),
    ("{% for i in range(9) %}x{% endfor %}", "loops"),
    ("{{ list.name.upper() }}", "calls"),
    ("{{ 'x' * 1000000000 }}", "'*'"),
    ("{{ list.name|center(1000000000) }}", "center"),
    ("{{ nobody }}", "undefined"),
    ("{% if %}", "line 1"),
])
def test_the_sandbox_refuses_unsafe_templates(source: str, why: str) -> None:
    with pytest.raises(templates.UnsafeTemplate, match=re.escape(why)):
        templates.check(source)
    templates.check(FOOTER)


@pytest.mark.parametrize(("source", "reads"), [
    ("-- {{ list.name }}", False),
    ("Sent to {{ member.address }}{% if member.address %}!{% endif %}", False),
    ("Hello {{ member.name }}", True),
    ("Hello {{ member['name'] }}", True),
    ("{{ member }}", True),
    ("{% set m = member %}{{ m.address }}", True),
    ("{{ member.address }} {{ member.name|upper }}", True),
])
def test_a_template_reads_the_member_name_only_where_it_may_show_it(source: str,
                                                                    reads: bool) -> None:
    """The scheduler looks the name up in the store per personalized copy only then."""
    assert templates.reads_member_name(source) is reads


def test_html_without_a_body_element_gets_the_footer_before_its_end() -> None:
    raw = (b"From: a@x.test\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/html; charset=us-ascii\r\n\r\n<html><p>hi</p></html>\r\n")
    result = parsed(render(raw, team(header_template="top", footer_template="end")))
    assert content(result) == ('<div class="mailflow-decoration">top</div>\n<html><p>hi</p>'
                               '<div class="mailflow-decoration">end</div>\n</html>\n')


def test_the_relays_own_messages_are_not_decorated() -> None:
    raw = MESSAGES[0].read_bytes()
    generated = InboundMessage("q2", "", ("team@example.test",), "h", len(raw), 0.0, "", "",
                               "generated")
    copy = render_copy(raw, generated, team(subject_prefix="[t]", footer_template="f"),
                       IDENTITY)
    assert copy.endswith(raw)
