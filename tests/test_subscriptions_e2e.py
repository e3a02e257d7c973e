"""Subscriptions by mail and on the list's page end to end: a running relay on SQLite and
PostgreSQL, commands sent over SMTP, the answers read at the sink, the confirmation
page over real HTTP, ``mailflow requests`` for the approve flow.

Each test has a list and addresses of its own, so the relay and the sink are shared.
"""

from __future__ import annotations

import email.policy
import json
import re
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest

from mailflow.confirm_tokens import ConfirmTokens
from mailflow.model import ListKind
from mailflow.services.directory import DirectoryService
from mailflow.testing.factories import make_message
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import Received, SmtpSink

PUBLIC = "https://lists.example.test"


@pytest.fixture(scope="module")
def relay(make_module_relay: Callable[..., RelayProcess]) -> RelayProcess:
    return make_module_relay(recipient_cache_ttl="0", poll_interval="0.1",
                             public_url=PUBLIC).start()


def parsed(received: Received) -> EmailMessage:
    message = BytesParser(policy=email.policy.default).parsebytes(received.content)
    assert isinstance(message, EmailMessage)
    return message


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def robot(address: str, suffix: str) -> str:
    local, domain = address.split("@")
    return f"{local}-{suffix}@{domain}"


def new_list(relay: RelayProcess, policy: str, *, name: str = "") -> tuple[str, list[str]]:
    address, members = relay.fresh_list(members=1, name=name)
    with relay.repository() as repo:
        DirectoryService(repo).update_list(address, subscription=policy)
    return address, members


def roster(relay: RelayProcess, address: str) -> list[str]:
    with relay.repository() as repo:
        return [m.address for m in repo.members(address)]


def stranger(address: str) -> str:
    return f"new.{address.split('@')[0]}.{secrets.token_hex(3)}@outside.test"


def mail_for(sink: SmtpSink, address: str, count: int = 1) -> EmailMessage:
    """The ``count``-th mail to ``address`` (waits for it)."""
    got = sink.wait_for_copies([address], count=count)
    assert len(got) >= count, f"{len(got)} mail(s) to {address}, wanted {count}"
    return parsed(got[count - 1])


def confirm_token(message: EmailMessage) -> str:
    subject = str(message["Subject"])
    assert subject.startswith("confirm ")
    return subject.removeprefix("confirm ")


def events(relay: RelayProcess, queue_id: str, kind: str = "command") -> list[str]:
    with relay.repository() as repo:
        return [d for _, k, d in repo.message_events(queue_id) if k == kind]


def test_join_by_mail_is_confirmed_by_a_reply_then_welcomed(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    address, _ = new_list(relay, "confirm", name="Team Talk")
    person = stranger(address)
    queue_id = relay.post(person, robot(address, "join"),
                    make_message(robot(address, "join"), sender=person, subject="hi"))
    ask = mail_for(module_sink, person)
    assert ask["From"] == robot(address, "request")
    assert ask["Reply-To"] == robot(address, "request")
    assert ask["Auto-Submitted"] == "auto-replied"
    token = confirm_token(ask)
    assert f"{PUBLIC}/lists/{address}/confirm/{token}" in text_of(ask)
    [raw] = module_sink.wait_for_copies([person], timeout=0)
    assert raw.mail_from == "<>"
    # The token as it is on one line, never split into encoded words.
    assert f"\r\nSubject: confirm {token}\r\n".encode() in raw.content
    assert person not in roster(relay, address)
    assert events(relay, queue_id) == [f"{address}: join from <{person}>: confirmation sent"]
    # The reply as a mail client writes it: "Re: " and the quoted text.
    reply = make_message(robot(address, "request"), sender=person,
                         subject=f"Re: confirm {token}",
                         body=b"> Someone, perhaps you, asked to join\r\n")
    relay.post(person, robot(address, "request"), reply)
    welcome = mail_for(module_sink, person, 2)
    assert welcome["Subject"] == "Welcome to Team Talk"
    assert f"{person} is now a member of {address}" in text_of(welcome)
    assert person in roster(relay, address)
    # The same token again finds the work done: told so, not added twice.
    relay.post(person, robot(address, "request"), reply)
    again = mail_for(module_sink, person, 3)
    assert again["Subject"] == f"Already a member of {address}"
    assert roster(relay, address).count(person) == 1


def test_an_open_list_welcomes_at_once(relay: RelayProcess, module_sink: SmtpSink) -> None:
    address, _ = new_list(relay, "open")
    person = stranger(address)
    relay.post(person, robot(address, "request"),
         make_message(robot(address, "request"), sender=person, subject="subscribe"))
    welcome = mail_for(module_sink, person)
    assert welcome["Subject"] == f"Welcome to {address}"
    assert person in roster(relay, address)


def test_a_welcome_template_is_rendered_in_the_sandbox(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    address, _ = new_list(relay, "open", name="Choir")
    with relay.repository() as repo:
        DirectoryService(repo).update_list(
            address, welcome_template="Hello {{ member.address }}, this is {{ list.name }}; "
                                      "leave at {{ list.leave }}.\n")
    person = stranger(address)
    relay.post(person, robot(address, "join"),
         make_message(robot(address, "join"), sender=person))
    welcome = mail_for(module_sink, person)
    assert text_of(welcome).strip() == (f"Hello {person}, this is Choir; leave at "
                                        f"{robot(address, 'leave')}.")


def test_a_closed_list_answers_that_it_is_closed(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    address, _ = new_list(relay, "closed")
    person = stranger(address)
    queue_id = relay.post(person, robot(address, "join"),
                    make_message(robot(address, "join"), sender=person))
    answer = mail_for(module_sink, person)
    assert answer["Subject"] == f"{address} is closed"
    assert "takes no new members by request" in text_of(answer)
    assert person not in roster(relay, address)
    assert events(relay, queue_id) == [
        f"{address}: join from <{person}>: refused, the list is closed"]


def test_an_approve_list_holds_the_request_for_the_owners(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    address, _ = new_list(relay, "approve")
    owner = f"owner.{address.split('@')[0]}@members.test"
    with relay.repository() as repo:
        DirectoryService(repo).add_members(address, [owner], role="owner")
    person = stranger(address)
    relay.post(person, robot(address, "join"),
         make_message(robot(address, "join"), sender=person))
    waiting = mail_for(module_sink, person)
    assert waiting["Subject"] == f"Your request to join {address}"
    notice = mail_for(module_sink, owner)
    assert notice["Subject"] == f"{address}: {person} asks to join"
    assert person not in roster(relay, address)
    result = relay.cli("requests", "ls", "--list", address, "--json")
    assert result.returncode == 0, result.stderr
    [request] = json.loads(result.stdout)
    assert request["address"] == person
    approved = relay.cli("requests", "approve", str(request["id"]))
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.strip() == f"approved: {person} joined {address}; welcome queued"
    welcome = mail_for(module_sink, person, 2)
    assert welcome["Subject"] == f"Welcome to {address}"
    assert person in roster(relay, address)
    left = json.loads(relay.cli("requests", "ls", "--json").stdout)
    assert all(r["address"] != person for r in left)
    gone = relay.cli("requests", "approve", str(request["id"]))
    assert gone.returncode != 0 and f"no request {request['id']} waiting" in gone.stderr


def test_leave_is_confirmed_then_says_goodbye(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    address, [member] = new_list(relay, "confirm")
    relay.post(member, robot(address, "leave"),
         make_message(robot(address, "leave"), sender=member))
    ask = mail_for(module_sink, member)
    token = confirm_token(ask)
    assert member in roster(relay, address)  # a forged leave changes nothing yet
    relay.post(member, robot(address, "request"),
         make_message(robot(address, "request"), sender=member, subject="Re: whatever",
                      body=f"confirm {token}\r\n".encode()))
    goodbye = mail_for(module_sink, member, 2)
    assert goodbye["Subject"] == f"You have left {address}"
    assert f"{member} is no longer a member of {address}" in text_of(goodbye)
    assert member not in roster(relay, address)


def test_help_answers_with_the_commands_and_the_lists_name(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    address, _ = new_list(relay, "confirm", name="Garden club")
    person = stranger(address)
    relay.post(person, robot(address, "request"),
         make_message(robot(address, "request"), sender=person, subject="help"))
    answer = mail_for(module_sink, person)
    assert answer["Subject"] == f"Help for {address}"
    text = text_of(answer)
    assert f"Garden club <{address}>" in text
    assert f"To join:   send a message to {robot(address, 'join')}" in text
    assert f"Web page:  {PUBLIC}/lists/{address}" in text


def test_owner_mail_reaches_the_owners_from_the_bounce_address(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    address, [member] = new_list(relay, "confirm")
    owner = f"owner.{address.split('@')[0]}@members.test"
    with relay.repository() as repo:
        DirectoryService(repo).add_members(address, [owner], role="owner")
    person = stranger(address)
    content = make_message(robot(address, "owner"), sender=person, subject="a question")
    relay.post(person, robot(address, "owner"), content)
    [copy] = module_sink.wait_for_copies([owner])
    assert copy.mail_from == robot(address, 'bounces')
    # As it came, no list decoration: only our loop marker before it.
    marker, rest = copy.content.split(b"\r\n", 1)
    assert marker.startswith(b"X-MailFlow-Loop: ") and rest == content
    relay.wait_settled()
    assert module_sink.wait_for_copies([member], timeout=0) == []


def test_mail_to_the_bounce_address_that_is_no_bounce_goes_to_the_owners(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    address, _ = new_list(relay, "confirm")
    owner = f"owner.{address.split('@')[0]}@members.test"
    with relay.repository() as repo:
        DirectoryService(repo).add_members(address, [owner], role="owner")
    person = stranger(address)
    content = make_message(robot(address, "bounces"), sender=person,
                           subject="Re: your post", body=b"I am a person, not a bounce.\r\n")
    relay.post(person, robot(address, "bounces"), content)
    [copy] = module_sink.wait_for_copies([owner])
    assert copy.mail_from == "<>"  # a bounce of the forward goes nowhere
    assert copy.content.split(b"\r\n", 1)[1] == content


def test_no_answer_to_automatic_mail(relay: RelayProcess, module_sink: SmtpSink) -> None:
    address, _ = new_list(relay, "open")
    person = stranger(address)
    queue_id = relay.post(person, robot(address, "join"),
                    make_message(robot(address, "join"), sender=person,
                                 extra_headers=["Auto-Submitted: auto-replied"]))
    listed = relay.post(person, robot(address, "request"),
                  make_message(robot(address, "request"), sender=person, subject="help",
                               extra_headers=["List-Id: <other.example.org>"]))
    relay.wait_settled()
    assert module_sink.wait_for_copies([person], timeout=0) == []
    assert person not in roster(relay, address)
    assert events(relay, queue_id) == [
        f"{address}: ignored, no answer: Auto-Submitted: auto-replied"]
    assert events(relay, listed) == [
        f"{address}: ignored, no answer: it came through a mailing list (List-Id)"]


def test_forged_and_expired_tokens_are_refused(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    address, _ = new_list(relay, "confirm")
    person = stranger(address)
    forged = ConfirmTokens("not the relay's secret").token(address, person, "join", 0)
    forged = forged.replace(forged.split(".")[0], "j" + format(2_000_000_000, "x"))
    relay.post(person, robot(address, "request"),
         make_message(robot(address, "request"), sender=person, subject=f"confirm {forged}"))
    refused = mail_for(module_sink, person)
    assert refused["Subject"] == f"Not confirmed: {address}"
    assert "not valid for this list" in text_of(refused)
    # A real token of this relay, expired: ask for one, then change nothing but its
    # expiry (which the MAC covers) -- refused as forged; the relay's own old token
    # is checked by the unit tests with a moved clock.
    relay.post(person, robot(address, "join"),
         make_message(robot(address, "join"), sender=person))
    token = confirm_token(mail_for(module_sink, person, 2))
    head = token.split(".")[0]
    stale = token.replace(head, "j" + format(1_000_000, "x"), 1)
    relay.post(person, robot(address, "request"),
         make_message(robot(address, "request"), sender=person, subject=f"confirm {stale}"))
    assert mail_for(module_sink, person, 3)["Subject"] == f"Not confirmed: {address}"
    assert person not in roster(relay, address)


# -- the list's page -----------------------------------------------------------------------

def http(relay: RelayProcess, method: str, path: str, form: dict[str, str] | None = None
         ) -> tuple[int, str, dict[str, str]]:
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{relay.http_port}{path}", data=data,
                                     method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


def test_join_by_the_page_and_confirm_by_link_get_shows_post_confirms(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    address, [member] = new_list(relay, "confirm", name="Page list")
    status, page, fields = http(relay, "GET", f"/lists/{address}")
    assert status == 200 and "<form" in page and 'name="address"' in page
    assert "script" not in page.lower().replace("no inline scripts", "")
    assert "default-src 'none'" in fields.get("content-security-policy", "")
    assert '<link rel="stylesheet" href="/public/style.css">' in page
    status, css, fields = http(relay, "GET", "/public/style.css")
    assert status == 200 and fields["content-type"].startswith("text/css") and "main" in css
    person = stranger(address)
    status, answer, _ = http(relay, "POST", f"/lists/{address}", {"address": person})
    assert status == 200
    # A member asking gets the very same page: the form does not tell who is on the list.
    status, same, _ = http(relay, "POST", f"/lists/{address}", {"address": member})
    assert status == 200 and same.replace(member, person) == answer
    ask = mail_for(module_sink, person)
    link = re.search(rf"{re.escape(PUBLIC)}(/lists/\S+/confirm/\S+)", text_of(ask))
    assert link is not None
    path = link.group(1)
    status, page, _ = http(relay, "GET", path)
    assert status == 200 and 'method="post"' in page
    assert person not in roster(relay, address)  # a scanner's GET confirms nothing
    status, page, _ = http(relay, "POST", path, {})
    assert status == 200 and "member" in page
    assert person in roster(relay, address)
    assert mail_for(module_sink, person, 2)["Subject"] == "Welcome to Page list"
    forged = path.rsplit("/", 1)[0] + "/j1.eA." + "a" * 26
    status, page, _ = http(relay, "GET", forged)
    assert status == 404


def test_the_page_refuses_a_bad_address(relay: RelayProcess) -> None:
    address, _ = new_list(relay, "confirm")
    status, page, _ = http(relay, "POST", f"/lists/{address}", {"address": "not an address"})
    assert status == 400 and "valid" in page


def test_a_command_piped_in_is_answered_as_over_smtp(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    """``mailflow pipe`` (Postfix's pipe transport) runs the same commands step."""
    address, _ = new_list(relay, "open")
    person = stranger(address)
    piped = relay.cli("pipe", "--from", person, "--to", robot(address, "join"),
                      input=make_message(robot(address, "join"), sender=person))
    assert piped.returncode == 0, piped.stderr
    assert mail_for(module_sink, person)["Subject"] == f"Welcome to {address}"
    assert person in roster(relay, address)


def test_the_cli_sets_and_shows_the_policy_and_refuses_bad_values(
        relay: RelayProcess, tmp_path: Path) -> None:
    address, _ = relay.fresh_list(members=0)
    welcome = tmp_path / "welcome.txt"
    welcome.write_text("Hi {{ member.address }}\n", encoding="utf-8")
    done = relay.cli("list", "update", address, "--subscription", "closed",
                     "--welcome-file", str(welcome))
    assert done.returncode == 0, done.stderr
    shown = json.loads(relay.cli("list", "show", address, "--json").stdout)
    assert shown["subscription"] == "closed"
    assert shown["welcome_template"] == "Hi {{ member.address }}\n"
    assert shown["goodbye_template"] == ""
    assert "subscription: closed" in relay.cli("list", "show", address).stdout
    bad = tmp_path / "bad.txt"
    bad.write_text("{% for x in list %}{{ x }}{% endfor %}", encoding="utf-8")
    refused = relay.cli("list", "update", address, "--goodbye-file", str(bad))
    assert refused.returncode == 2
    assert "goodbye template refused: line 1: loops are not allowed" in refused.stderr
    wrong = relay.cli("list", "update", address, "--subscription", "sometimes")
    assert wrong.returncode == 2 and "sometimes" in wrong.stderr
    alias, _ = relay.fresh_list(members=0, kind=ListKind.ALIAS)
    on_alias = relay.cli("list", "update", alias, "--subscription", "open")
    assert on_alias.returncode == 2 and "is not a list" in on_alias.stderr


def test_the_form_is_limited_per_client(make_relay: Callable[..., RelayProcess],
                                        sink: SmtpSink) -> None:
    relay = make_relay(subscribe_posts_per_hour="2", public_url=PUBLIC).start()
    address, _ = relay.fresh_list(members=0)
    first, second = stranger(address), stranger(address)
    for person in (first, second):
        assert http(relay, "POST", f"/lists/{address}", {"address": person})[0] == 200
    status, page, _ = http(relay, "POST", f"/lists/{address}",
                           {"address": stranger(address)})
    assert status == 429 and "try again in" in page
    assert sorted(r for m in sink.wait_for_copies([first, second]) for r in m.rcpt_tos) == \
        sorted([first, second])
