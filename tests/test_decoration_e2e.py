"""List headers and decoration end to end: a running relay on SQLite and PostgreSQL,
the ``mailflow list update`` command, an SMTP post delivered to the sink decorated, and
the RFC 8058 one-click URL over real HTTP (a POST unsubscribes, a GET does not)."""

from __future__ import annotations

import email
import re
import smtplib
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import httpx
import pytest

from mailflow.services.installation import UNSUBSCRIBE_KEY
from mailflow.testing.factories import make_message
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink
from mailflow.unsubscribe_tokens import UnsubscribeTokens

PUBLIC_URL = "https://lists.example.test"
FOOTER = "-- \n{{ list.name }}: {{ list.address }}\nLeave: {{ unsubscribe_url }}\n"


@pytest.fixture(scope="module")
def relay(make_module_relay: Callable[..., RelayProcess]) -> RelayProcess:
    return make_module_relay(public_url=PUBLIC_URL, recipient_cache_ttl="0",
                             poll_interval="0.1").start()


def cli(relay: RelayProcess, *args: str) -> str:
    result = relay.cli(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_decorated_list_delivers_decorated_copies(relay: RelayProcess, module_sink: SmtpSink,
                                                    tmp_path: Path) -> None:
    address, members = relay.fresh_list(members=2, name="Team")
    footer = tmp_path / "footer.txt"
    footer.write_text(FOOTER, encoding="utf-8")
    assert cli(relay, "list", "update", address, "--subject-prefix", "[team]",
               "--footer-file", str(footer), "--reply-to", "list", "--archive-url",
               "https://archive.example.test/team") == f"updated list {address}\n"
    body = "Grüße aus Köln.\r\n".encode("iso-8859-1")
    post = make_message(address, subject="=?iso-8859-1?q?Gr=FC=DFe?=", body=body,
                        extra_headers=["MIME-Version: 1.0",
                                       "Content-Type: text/plain; charset=iso-8859-1",
                                       "Content-Transfer-Encoding: 8bit"])
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        assert client.sendmail("poster@outside.test", [address], post) == {}
    copies = module_sink.wait_for_copies(members)
    assert {r for m in copies for r in m.rcpt_tos} == set(members)
    copy = email.message_from_bytes(copies[0].content, policy=default_policy)
    assert isinstance(copy, EmailMessage)
    assert str(copy["Subject"]) == "[team] Grüße"
    assert str(copy["Reply-To"]) == address
    assert copy.get_content_charset() == "iso-8859-1"
    page = f"{PUBLIC_URL}/lists/{address}"
    assert str(copy.get_content()).replace("\r\n", "\n") == (
        f"Grüße aus Köln.\n-- \nTeam: {address}\nLeave: {page}\n")
    assert " ".join(str(copy["List-Unsubscribe"]).split()) == (
        f"<mailto:{address.replace('@', '-leave@')}>, <{page}>")
    assert copy["List-Unsubscribe-Post"] is None  # shared copies: no one-click
    assert str(copy["List-Archive"]) == "<https://archive.example.test/team>"
    assert str(copy["Precedence"]) == "list"
    shown = cli(relay, "list", "show", address)
    assert "subject_prefix: [team]\n" in shown and "reply_to: list\n" in shown


def test_an_unsafe_template_is_refused_with_a_clear_error(relay: RelayProcess,
                                                          tmp_path: Path) -> None:
    address, _ = relay.fresh_list(members=1)
    footer = tmp_path / "footer.txt"
    footer.write_text("{{ list.__class__.__mro__ }}", encoding="utf-8")
    result = relay.cli("list", "update", address, "--footer-file", str(footer))
    assert result.returncode != 0
    assert "footer template refused: access to attribute '__class__'" in result.stderr
    footer.write_text("{% for i in range(99) %}{{ i }}{% endfor %}", encoding="utf-8")
    result = relay.cli("list", "update", address, "--footer-file", str(footer))
    assert result.returncode != 0
    assert "loops are not allowed" in result.stderr
    assert '"footer_template": ""' in cli(relay, "list", "show", address, "--json")


def test_one_click_post_unsubscribes_and_a_get_does_not(relay: RelayProcess,
                                                        module_sink: SmtpSink) -> None:
    address, members = relay.fresh_list(members=3)
    with relay.repository() as repo:
        tokens = UnsubscribeTokens(repo.ensure_meta(UNSUBSCRIBE_KEY, ""))
    base = f"http://127.0.0.1:{relay.http_port}/lists/{address}/unsubscribe"
    url = f"{base}/{tokens.token(address, members[0])}"
    with httpx.Client(timeout=30) as client:
        page = client.get(url)  # what a link scanner does
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert re.search(r'<form method="post">.*name="List-Unsubscribe" value="One-Click"',
                         page.text)
        assert client.get(f"{base}/{tokens.token(address, members[0])[:-2]}xx"
                          ).status_code == 404
        forged = client.post(f"{base}/{tokens.token(address, members[0])[:-2]}xx",
                             content=b"List-Unsubscribe=One-Click",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert forged.status_code == 404
        assert forged.headers["content-type"] == "application/problem+json"
        wrong = client.post(url, content=b"List-Unsubscribe=Yes",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert wrong.status_code == 422
        with relay.repository() as repo:
            assert [m.address for m in repo.members(address)] == members  # all still there
        done = client.post(url, content=b"List-Unsubscribe=One-Click",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert done.status_code == 200
        # As some mail clients send it: multipart/form-data.
        multipart = client.post(f"{base}/{tokens.token(address, members[1])}",
                                files={"List-Unsubscribe": (None, "One-Click")})
        assert multipart.status_code == 200
        page = client.get(f"http://127.0.0.1:{relay.http_port}/lists/{address}")
        assert page.status_code == 200 and address.replace("@", "-join@") in page.text
        assert client.get(f"http://127.0.0.1:{relay.http_port}/lists/nobody@example.test"
                          ).status_code == 404
    with relay.repository() as repo:
        assert [m.address for m in repo.members(address)] == members[2:]
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.sendmail("poster@outside.test", [address], make_message(address))
    module_sink.wait_for_copies(members[2:])
    assert not [m for m in module_sink.messages if set(members[:2]) & set(m.rcpt_tos)]
