"""The public pages in a real Chromium: joining by the list's page with the link of the
confirmation mail, and the one-click unsubscribe link of a personalized copy.

Links in mail carry ``public_url``; the browser opens the same path on the relay's own
HTTP port, as a reverse proxy would pass it on.  The tests write the screenshots of
docs/ui.md's public pages into docs/images/.
"""

from __future__ import annotations

import email.policy
import re
import secrets
import smtplib
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, expect

from mailflow.services.directory import DirectoryService
from mailflow.testing.browser import PHONE, screenshot
from mailflow.testing.factories import make_message
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink

IMAGES = Path(__file__).parent.parent / "docs" / "images"
PUBLIC = "https://lists.example.test"


@pytest.fixture(scope="module")
def relay(make_module_relay: Callable[..., RelayProcess]) -> Iterator[RelayProcess]:
    running = make_module_relay(recipient_cache_ttl="0", poll_interval="0.1",
                                public_url=PUBLIC).start()
    yield running
    running.stop()


@pytest.fixture
def phone(browser: Browser) -> Iterator[BrowserContext]:
    made = browser.new_context(viewport=PHONE)  # type: ignore[arg-type]
    yield made
    made.close()


def local(relay: RelayProcess, url: str) -> str:
    """A link of a mail (under ``public_url``) as the relay's own HTTP port serves it."""
    assert url.startswith(PUBLIC), url
    return f"http://127.0.0.1:{relay.http_port}{url.removeprefix(PUBLIC)}"


def parsed(content: bytes) -> EmailMessage:
    message = BytesParser(policy=email.policy.default).parsebytes(content)
    assert isinstance(message, EmailMessage)
    return message


def roster(relay: RelayProcess, address: str) -> dict[str, str]:
    with relay.repository() as repo:
        return {m.address: m.status.value for m in repo.members(address)}


def test_joining_on_the_lists_page_is_confirmed_by_the_mails_link(
        relay: RelayProcess, module_sink: SmtpSink, phone: BrowserContext) -> None:
    address, _ = relay.fresh_list(members=1, name="Gardeners")
    person = f"new.{secrets.token_hex(3)}@outside.test"
    page = phone.new_page()
    page.goto(local(relay, f"{PUBLIC}/lists/{address}"))
    page.get_by_label("Your email address").fill(person)
    screenshot(page, IMAGES, "public-subscribe")
    page.get_by_role("button", name="Subscribe").click()
    page.wait_for_load_state()
    assert person not in roster(relay, address)  # nothing before the confirmation
    [mail] = module_sink.wait_for_copies([person], count=1)
    body = parsed(mail.content).get_body(preferencelist=("plain",))
    assert body is not None
    link = re.search(rf"{re.escape(PUBLIC)}/lists/\S+/confirm/\S+", body.get_content())
    assert link is not None
    page.goto(local(relay, link.group(0)))
    confirm = page.get_by_role("button", name="Confirm: join")
    expect(confirm).to_be_visible()
    assert person not in roster(relay, address)  # opening the link changes nothing
    screenshot(page, IMAGES, "public-confirm")
    confirm.click()
    page.wait_for_load_state()
    assert roster(relay, address)[person] == "active"
    welcome = module_sink.wait_for_copies([person], count=2)[1]
    assert parsed(welcome.content)["Subject"] == "Welcome to Gardeners"


def test_the_one_click_link_of_a_copy_asks_first_then_unsubscribes(
        relay: RelayProcess, module_sink: SmtpSink, phone: BrowserContext) -> None:
    address, members = relay.fresh_list(members=2, name="Walkers")
    with relay.repository() as repo:
        DirectoryService(repo).update_list(address, personalize=True)
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.sendmail(members[1], [address], make_message(address, sender=members[1]))
    [copy] = module_sink.wait_for_copies([members[0]], count=1)
    header = str(parsed(copy.content)["List-Unsubscribe"])
    link = re.search(r"<(https://[^>]+/unsubscribe/[^>]+)>", header)
    assert link is not None, header
    page = phone.new_page()
    page.goto(local(relay, link.group(1)))  # what a link scanner does too
    button = page.get_by_role("button", name="Unsubscribe")
    expect(button).to_be_visible()
    expect(page.get_by_text(members[0])).to_be_visible()
    assert roster(relay, address)[members[0]] == "active"
    screenshot(page, IMAGES, "public-unsubscribe")
    button.click()
    page.wait_for_load_state()
    assert roster(relay, address).get(members[0], "gone") in ("unsubscribed", "gone")
    assert roster(relay, address)[members[1]] == "active"  # only the link's member
