"""Posting policy and moderation end to end: a running relay on SQLite and PostgreSQL,
SMTP clients, the sink as every member's and author's mailbox, and ``mailflow held``.

Each test has lists and senders of its own, so the relay is shared.  Its caches are
off (``recipient_cache_ttl`` 0) and its moderation sweep runs every 0.2 s, so a policy
applies to the next message and moderators hear of a held post at once.
"""

from __future__ import annotations

import email
import email.policy
import json
import smtplib
from collections.abc import Callable
from email.message import EmailMessage

import pytest

from mailflow.services.directory import DirectoryService
from mailflow.testing.factories import make_message
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import Received, SmtpSink


@pytest.fixture(scope="module")
def relay(make_module_relay: Callable[..., RelayProcess]) -> RelayProcess:
    return make_module_relay(recipient_cache_ttl="0", poll_interval="0.1",
                             moderation_interval="0.2").start()


def cli(relay: RelayProcess, *args: str) -> str:
    result = relay.cli(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def policy_list(relay: RelayProcess, posting: str, action: str = "reject"
                ) -> tuple[str, list[str], str, str]:
    """A list with two members, an owner and a moderator: (address, members, owner,
    moderator)."""
    address, members = relay.fresh_list(members=2)
    local = address.split("@")[0]
    owner, moderator = f"owner.{local}@members.test", f"mod.{local}@members.test"
    with relay.repository() as repo:
        directory = DirectoryService(repo)
        directory.update_list(address, posting=posting, non_member_action=action)
        directory.add_members(address, [owner], role="owner")
        directory.add_members(address, [moderator], role="moderator")
    return address, members, owner, moderator


def post(relay: RelayProcess, mail_from: str, to: str, content: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        assert client.sendmail(mail_from, [to], content) == {}


def parsed(received: Received) -> EmailMessage:
    message = email.message_from_bytes(received.content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def delivered(sink: SmtpSink, recipients: list[str], subject: str,
              count: int | None = None) -> list[str]:
    """Which of ``recipients`` got a copy with ``subject``, once ``count`` copies for
    them arrived (default: one each)."""
    mine = set(recipients)
    return sorted(r for m in sink.wait_for_copies(recipients, count)
                  if f"Subject: {subject}".encode() in m.content
                  for r in m.rcpt_tos if r in mine)


def held_for(relay: RelayProcess, address: str) -> list[dict[str, object]]:
    found: list[dict[str, object]] = json.loads(cli(relay, "held", "ls", "--list", address,
                                                    "--json"))
    return found


def test_a_members_only_list_refuses_non_members_at_rcpt_and_after_data(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    address, members, owner, moderator = policy_list(relay, "members")
    stranger = f"stranger.{address.split('@')[0]}@outside.test"
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        # The envelope sender alone decides: refused before the message is sent.
        with pytest.raises(smtplib.SMTPRecipientsRefused) as at_rcpt:
            client.sendmail(stranger, [address], make_message(address, sender=stranger))
        [(code, text)] = at_rcpt.value.recipients.values()
        assert code == 550
        assert text == (f"5.7.1 <{stranger}> is not a member of {address}, and only members "
                        "may post to it: subscribe first (with the address the message comes "
                        "from), or write to the list's owners").encode()
        # A member's envelope with a stranger's From: refused after DATA.
        with pytest.raises(smtplib.SMTPDataError) as after_data:
            client.sendmail(members[0], [address], make_message(address, sender=stranger))
        assert after_data.value.smtp_code == 550
        assert after_data.value.smtp_error.startswith(
            f"5.7.1 <{stranger}> is not a member of {address}".encode())
        # A member, both ways: delivered to everyone on the roster.
        client.sendmail(members[0], [address],
                        make_message(address, sender=members[0], subject="from a member"))
    everyone = [*members, owner, moderator]
    assert delivered(module_sink, everyone, "from a member") == sorted(everyone)
    assert held_for(relay, address) == []


def test_a_held_non_member_post_reaches_the_moderators_and_goes_out_once_approved(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    address, members, owner, moderator = policy_list(relay, "members", "hold")
    stranger = f"stranger.{address.split('@')[0]}@outside.test"
    post(relay, stranger, address, make_message(address, sender=stranger,
                                                subject="May I post?"))
    notices = module_sink.wait_for_copies([owner, moderator])
    assert sorted(r for m in notices for r in m.rcpt_tos) == sorted([owner, moderator])
    notice = parsed(notices[0])
    assert notices[0].mail_from == "<>" and notice["Auto-Submitted"] == "auto-generated"
    assert notice["Subject"] == f"{address}: post held for moderation: May I post?"
    text, attached = notice.iter_parts()
    [held] = held_for(relay, address)
    assert f"mailflow held approve {held['id']}" in str(text.get_content())
    assert attached.get_content_type() == "message/rfc822"
    assert attached.get_content()["From"] == stranger
    assert held["reason"] == (f"{address}: posting policy of {address}: <{stranger}> is not "
                              f"a member of {address}")
    assert not [m for m in module_sink.messages if members[0] in m.rcpt_tos]
    assert cli(relay, "held", "approve", str(held["id"])) == f"approved {held['id']}\n"
    assert delivered(module_sink, members, "May I post?") == sorted(members)
    assert held_for(relay, address) == []


def test_a_moderated_list_holds_member_posts_but_not_its_owners(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    address, members, owner, _moderator = policy_list(relay, "moderated")
    post(relay, members[0], address, make_message(address, sender=members[0],
                                                  subject="member post"))
    post(relay, owner, address, make_message(address, sender=owner, subject="owner post"))
    assert delivered(module_sink, members, "owner post") == sorted(members)
    [held] = held_for(relay, address)
    assert held["from"] == members[0]
    assert held["reason"] == (f"{address}: {address} is moderated: every post waits for a "
                              "moderator")


def test_an_announce_list_takes_posts_from_its_owner_only(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    address, members, owner, _moderator = policy_list(relay, "announce")
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail(members[0], [address], make_message(address, sender=members[0]))
        [(code, text)] = refused.value.recipients.values()
        assert (code, text) == (550, (f"5.7.1 only the owners and moderators of {address} may "
                                      f"post to it; <{members[0]}> is not one of them").encode())
        client.sendmail(owner, [address], make_message(address, sender=owner,
                                                       subject="announcement"))
    assert delivered(module_sink, members, "announcement") == sorted(members)


def test_rejecting_a_held_post_tells_its_author_why(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    address, members, owner, _moderator = policy_list(relay, "members", "hold")
    stranger = f"stranger.{address.split('@')[0]}@outside.test"
    post(relay, f"bounces+x@{stranger.split('@')[1]}", address,
         make_message(address, sender=f"Stranger <{stranger}>", subject="Buy now"))
    module_sink.wait_for_copies([owner])
    [held] = held_for(relay, address)
    out = cli(relay, "held", "reject", str(held["id"]), "--reason", "Off topic, sorry.")
    assert out == f"rejected {held['id']}; notice queued to {stranger}\n"
    [notice] = module_sink.wait_for_copies([stranger])
    assert notice.mail_from == "<>"  # the null sender: a notice is never bounced
    message = parsed(notice)
    assert message["Subject"] == f"Your post to {address} was rejected: Buy now"
    assert "Off topic, sorry." in str(message.get_content())
    assert held_for(relay, address) == []
    relay.wait_settled()
    assert not [m for m in module_sink.messages
                if members[0] in m.rcpt_tos and b"Buy now" in m.content]


def test_approving_with_add_member_lets_the_author_post_from_then_on(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    address, members, owner, _moderator = policy_list(relay, "members", "hold")
    newcomer = f"newcomer.{address.split('@')[0]}@outside.test"
    post(relay, newcomer, address, make_message(address, sender=newcomer, subject="first"))
    module_sink.wait_for_copies([owner])
    [held] = held_for(relay, address)
    assert cli(relay, "held", "approve", str(held["id"]), "--add-member") == (
        f"approved {held['id']}; author added to {address}\n")
    roster = json.loads(cli(relay, "member", "list", address, "--json"))
    assert {m["address"]: m["role"] for m in roster}[newcomer] == "member"
    post(relay, newcomer, address, make_message(address, sender=newcomer, subject="second"))
    # The approved post is expanded within poll_interval, the second at once: wait for
    # both, in whatever order they come.
    assert delivered(module_sink, members, "first", 2 * len(members)) == sorted(members)
    assert delivered(module_sink, members, "second", 2 * len(members)) == sorted(members)
    assert held_for(relay, address) == []


def test_a_moderator_rejects_a_large_held_post_over_the_api(
        relay: RelayProcess, module_sink: SmtpSink) -> None:
    """What only a running relay shows: the roster's moderator role is the API user's,
    and the relay's API reads a held post from its blob file (over
    ``max_body_in_database``) to tell its author."""
    import httpx

    from mailflow.services.access import AccessService
    from mailflow.store.access import AccessRepository

    address, _members, owner, moderator = policy_list(relay, "members", "hold")
    stranger = f"big.{address.split('@')[0]}@outside.test"
    post(relay, stranger, address, make_message(
        address, sender=stranger, subject="Large", body=b"x" * 100 + b"\r\n" * 40_000))
    module_sink.wait_for_copies([owner])
    with relay.repository() as repo:
        access = AccessService(AccessRepository(repo.engines))
        access.store.add_user(moderator, "not-a-hash-nobody-logs-in", False, 0.0)
        token = access.create_token(moderator)[1]
    with httpx.Client(base_url=f"http://127.0.0.1:{relay.http_port}/api/v1", timeout=30,
                      headers={"Authorization": f"Bearer {token}"}) as http:
        [held] = http.get("/held", params={"list": address}).json()["items"]
        answer = http.post(f"/held/{held['id']}/reject", json={"reason": "Too big."})
        assert answer.status_code == 200, answer.text
        assert answer.json()["notified"] == stranger
        assert http.get("/lists", params={"q": address}).json()["items"][0][
            "address"] == address
    [notice] = module_sink.wait_for_copies([stranger])
    assert "Too big." in str(parsed(notice).get_content())
    assert held_for(relay, address) == []
