"""The web UI in a real Chromium against a running relay: login, lists, members, the
import preview, access, CSRF, security headers, a phone-sized screen.

One relay per module (and backend): each test makes its own list, so none sees
another's.  The tests write the screenshots of docs/ui.md into docs/images/.
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect
from sqlalchemy import update

from mailflow.store.tables import members as roster
from mailflow.testing.browser import (
    DESKTOP,
    PHONE,
    csrf_of,
    http_login,
    login,
    screenshot,
)
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink

IMAGES = Path(__file__).parent.parent / "docs" / "images"
ADMIN, PASSWORD = "admin@example.test", "correct horse battery"
OWNER, OWNER_PASSWORD = "owner@example.test", "owner's long password"
AUTH_FAILURES, AUTH_WINDOW = 3, 600.0  # the relay's login limit, small enough to trip


@pytest.fixture(scope="module")
def relay(make_module_relay: Callable[..., RelayProcess]) -> Iterator[RelayProcess]:
    """A relay with a site admin, an owner of one list, and a second list."""
    running = make_module_relay(http_auth_max_failures=str(AUTH_FAILURES),
                                http_auth_window=str(AUTH_WINDOW))
    for email, password, admin in ((ADMIN, PASSWORD, True), (OWNER, OWNER_PASSWORD, False)):
        made = running.cli("user", "add", email, *(["--admin"] if admin else []),
                           "--password-stdin", input=f"{password}\n".encode())
        assert made.returncode == 0, made.stderr
    running.fresh_list(members=2, name="Owned")  # list<n>@example.test (and its domain)
    owned = running.fresh_list(members=0, name="Owned")[0]
    running.fresh_list(members=0, name="Someone else's")
    assert running.cli("user", "role", OWNER, owned, "--role", "owner").returncode == 0
    running.owned = owned  # type: ignore[attr-defined]
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def base(relay: RelayProcess) -> str:
    return f"http://127.0.0.1:{relay.http_port}"


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    made = browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
    yield made
    made.close()


@pytest.fixture
def admin(context: BrowserContext, base: str) -> Page:
    """A page logged in as the site admin."""
    page = context.new_page()
    login(page, base, ADMIN, PASSWORD)
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    return page


def test_login_refuses_a_wrong_password_then_lets_the_right_one_in(
        context: BrowserContext, base: str) -> None:
    page = context.new_page()
    page.goto(f"{base}/ui/lists")
    expect(page).to_have_url(re.compile(r"/ui/login\?next=/ui/lists$"))
    login(page, base, ADMIN, "not the password")
    expect(page.get_by_role("alert")).to_have_text("wrong address or password")
    expect(page.get_by_label("Email address")).to_have_value(ADMIN)
    screenshot(page, IMAGES, "login")
    # one failure: under the limit (the limit's own test comes last)
    login(page, base, ADMIN, PASSWORD)
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    cookie = next(c for c in context.cookies() if c["name"] == "mf_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/ui"
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_text("You are logged out.")).to_be_visible()
    page.goto(f"{base}/ui/")
    expect(page).to_have_url(re.compile(r"/ui/login"))


def test_the_dashboard_shows_the_last_days_deliveries_and_failures(
        admin: Page, relay: RelayProcess, module_sink: SmtpSink) -> None:
    address, members = relay.fresh_list(members=3, name="Busy")
    module_sink.fail_rcpt(members[2], *["550 5.1.1 no such mailbox here"] * 2)  # both posts
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        for n in range(2):
            client.sendmail("poster@outside.test", [address],
                            f"Subject: post {n}\r\n\r\nhello\r\n".encode())
    relay.wait_settled()
    page = admin
    page.reload()
    expect(page.locator("#h-chart + p")).to_have_text(
        "4 delivered, 2 failed (UTC hours; failed on top, in red).")
    expect(page.locator(".chart rect.bar")).to_have_count(1)  # all in this hour
    expect(page.locator(".chart rect.bar-failed")).to_have_count(1)
    failures = page.locator("section", has=page.locator("#h-failures")).locator("tbody tr")
    expect(failures).to_have_count(2)
    expect(failures.first).to_contain_text(members[2])
    expect(failures.first).to_contain_text("550 5.1.1 no such mailbox here")
    screenshot(page, IMAGES, "dashboard")


def test_an_admin_creates_a_list_and_changes_its_settings(admin: Page, base: str) -> None:
    page = admin
    page.get_by_role("link", name="Lists").click()
    page.get_by_label("Address").fill("team@unserved.test")  # a browser takes it
    page.get_by_role("button", name="Create").click()
    expect(page.locator("#error-address")).to_contain_text("unserved.test")
    page.get_by_label("Address").fill("newsletter@example.test")
    page.get_by_label("Display name").fill("Newsletter")
    screenshot(page, IMAGES, "lists")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("status")).to_contain_text("Created newsletter@example.test")
    expect(page.get_by_label("Who may post")).to_have_value("open")  # the defaults
    page.get_by_label("Who may post").select_option("announce")
    page.get_by_label("Subject prefix").fill("[news]")
    page.get_by_label("Days a held post waits").fill("0")  # out of range
    page.get_by_role("button", name="Save settings").click()
    error = page.locator("#error-hold_days")
    expect(error).to_have_text("invalid hold time 0 days: it must be between 1 and 365")
    expect(page.get_by_label("Days a held post waits")).to_have_attribute(
        "aria-describedby", "help-hold_days error-hold_days")
    page.get_by_label("Days a held post waits").fill("7")
    page.get_by_role("button", name="Save settings").click()
    expect(page.get_by_role("status")).to_have_text("Settings saved.")
    expect(page.get_by_label("Who may post")).to_have_value("announce")
    expect(page.get_by_label("Subject prefix")).to_have_value("[news]")
    screenshot(page, IMAGES, "list-settings")
    page.get_by_role("link", name="Audit log").click()
    row = page.locator("tr", has_text="list.update")
    expect(row.first).to_contain_text("posting='announce'")
    expect(page.locator("tr", has_text="list.create").first).to_contain_text(ADMIN)


def test_bulk_import_shows_the_bad_row_before_anything_is_added(
        admin: Page, base: str, relay: RelayProcess) -> None:
    address, _ = relay.fresh_list(members=0, name="Import")
    page = admin
    page.goto(f"{base}/ui/lists/{address}/members/import")
    page.get_by_label("Or paste the rows").fill(
        "email,name\nann@example.org,Ann\nnot-an-address,Bad\nben@example.org,Ben\n"
        "cat@example.org,Cat\n")
    page.get_by_role("button", name="Check the file").click()
    expect(page.locator("#import-summary")).to_contain_text("3 of 4 rows can be imported")
    errors = page.locator("#import-errors tbody tr")
    expect(errors).to_have_count(1)
    expect(errors.first).to_contain_text("3")  # the file's third row (the header is 1)
    expect(errors.first).to_contain_text("not-an-address")
    screenshot(page, IMAGES, "import-preview")
    with relay.repository() as repo:
        assert repo.members(address) == []  # the preview adds nothing
    page.get_by_role("button", name="Import 3 members").click()
    expect(page.get_by_role("status")).to_contain_text(
        "Imported: 3 added, 0 already members; 1 invalid rows skipped.")
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(3)
    page.get_by_label("Search members").fill("BEN")  # htmx asks as one types
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Ben")
    expect(page).to_have_url(re.compile(r"/members\?q=BEN$"))
    page.get_by_label("Search members").fill("example.org")
    page.get_by_role("button", name="Search").click()  # and without script, the form
    expect(rows).to_have_count(3)
    page.goto(f"{base}/ui/lists/{address}/members")
    screenshot(page, IMAGES, "members")
    with relay.repository() as repo:
        assert [(m.address, m.name) for m in repo.members(address)] == [
            ("ann@example.org", "Ann"), ("ben@example.org", "Ben"), ("cat@example.org", "Cat")]


def test_members_are_added_removed_and_given_a_role(admin: Page, base: str,
                                                    relay: RelayProcess) -> None:
    address, _ = relay.fresh_list(members=0)
    page = admin
    page.goto(f"{base}/ui/lists/{address}/members")
    page.get_by_label("Address").fill("dan@example.org")
    page.get_by_label("Role", exact=True).select_option("moderator")
    page.get_by_role("button", name="Add member").click()
    expect(page.get_by_role("status")).to_have_text("Added dan@example.org.")
    page.get_by_label("Role of dan@example.org", exact=True).select_option("owner")
    page.get_by_role("button", name="Set the role of dan@example.org").click()
    expect(page.get_by_role("status")).to_have_text("dan@example.org is now owner.")
    with relay.repository() as repo:
        assert [(m.address, m.role.value) for m in repo.members(address)] == [
            ("dan@example.org", "owner")]
    with relay.repository() as repo, repo.engines.writer.begin() as conn:
        conn.execute(update(roster).where(roster.c.address == "dan@example.org")
                     .values(status="disabled", bounce_score=5.0))  # as bounces leave it
    page.reload()
    expect(page.locator("tbody tr").first).to_contain_text("disabled")
    page.get_by_role("button", name="Enable dan@example.org again").click()
    expect(page.get_by_role("status")).to_have_text("dan@example.org is active again.")
    expect(page.locator("tbody tr").first).to_contain_text("active")
    page.once("dialog", lambda dialog: dialog.accept())  # data-confirm asks first
    page.get_by_role("button", name="Remove dan@example.org").click()
    expect(page.get_by_role("status")).to_have_text("Removed dan@example.org.")
    with relay.repository() as repo:
        assert repo.members(address) == []


def test_an_owner_sees_only_their_own_lists(context: BrowserContext, base: str,
                                            relay: RelayProcess) -> None:
    owned = relay.owned  # type: ignore[attr-defined]
    with relay.repository() as repo:
        others = [m.address for m, _ in repo.lists_with_counts() if m.address != owned]
    assert others
    page = context.new_page()
    login(page, base, OWNER, OWNER_PASSWORD)
    expect(page.get_by_role("link", name="Domains")).to_have_count(0)  # admins' section
    mine = page.locator("section", has=page.get_by_role("heading", name="Your lists"))
    # the owner's role is a roster entry (disabled: access, no mail), counted as one
    expect(mine.get_by_role("listitem")).to_have_text([f"{owned} (1 member)"])
    expect(page.get_by_text("Deliveries per hour")).to_have_count(0)  # the whole relay's
    page.get_by_role("link", name="Lists").click()
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(page.locator("tbody")).to_contain_text(owned)
    answer = page.goto(f"{base}/ui/lists/{others[0]}")
    assert answer is not None and answer.status == 404  # as if it did not exist
    answer = page.goto(f"{base}/ui/lists/{others[0]}/members")
    assert answer is not None and answer.status == 404
    answer = page.goto(f"{base}/ui/audit")
    assert answer is not None and answer.status == 403
    page.goto(f"{base}/ui/lists/{owned}")
    expect(page.get_by_role("button", name="Save settings")).to_be_visible()


def test_a_post_without_the_csrf_token_is_refused(base: str, relay: RelayProcess) -> None:
    with httpx.Client(base_url=base, timeout=10) as http:
        assert http_login(http, ADMIN, PASSWORD).status_code == 303
        for data in ({"name": "csrf.example.test"},
                     {"name": "csrf.example.test", "csrf_token": "0" * 64}):
            refused = http.post("/ui/domains", data=data)
            assert refused.status_code == 403, refused.text
            assert "CSRF token" in refused.text
        page = http.get("/ui/domains")
        added = http.post("/ui/domains", data={"name": "csrf.example.test",
                                               "csrf_token": csrf_of(page.text)})
        assert added.status_code == 303
        # htmx sends the token in a header instead
        token = csrf_of(http.get("/ui/domains").text)
        removed = http.post("/ui/domains/csrf.example.test/remove",
                            headers={"X-CSRF-Token": token, "HX-Request": "true"})
        assert removed.status_code == 200 and removed.headers["hx-redirect"] == "/ui/domains"
    with relay.repository() as repo:
        assert "csrf.example.test" not in [d.name for d in repo.domains()]


def test_pages_send_security_headers_and_no_inline_code(base: str) -> None:
    with httpx.Client(base_url=base, timeout=10) as http:
        http_login(http, ADMIN, PASSWORD)
        for path in ("/ui/login", "/ui/", "/ui/lists", "/ui/domains", "/ui/audit"):
            answer = http.get(path)
            assert answer.status_code == 200, path
            assert answer.headers["content-security-policy"].startswith("default-src 'self'")
            assert "unsafe-inline" not in answer.headers["content-security-policy"]
            assert answer.headers["x-frame-options"] == "DENY"
            assert answer.headers["referrer-policy"] == "same-origin"
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert not re.search(r"<script(?![^>]*\bsrc=)", answer.text), path
            assert not re.search(r"\sstyle=|\son[a-z]+=", answer.text), path
        htmx = http.get("/ui/static/htmx.min.js")
        assert htmx.status_code == 200 and "htmx" in htmx.text[:200]
        assert http.get("/").headers["location"] == "/ui/"
        api = http.get("/api/v1/lists")  # the API keeps problem details
        assert api.status_code == 401 and api.headers["content-type"] == (
            "application/problem+json")


def test_the_main_pages_fit_a_375_pixel_wide_screen(browser: Browser, base: str,
                                                    relay: RelayProcess) -> None:
    address, _ = relay.fresh_list(members=2, name="Phone")
    phone = browser.new_context(viewport=PHONE)  # type: ignore[arg-type]
    try:
        page = phone.new_page()
        login(page, base, ADMIN, PASSWORD)
        for path in ("/ui/", "/ui/lists", "/ui/domains", "/ui/audit", f"/ui/lists/{address}",
                     f"/ui/lists/{address}/members",
                     f"/ui/lists/{address}/members/import"):
            page.goto(base + path)
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, f"{path} scrolls sideways by {overflow} px at 375 px"
        page.goto(f"{base}/ui/lists/{address}/members")
        screenshot(page, IMAGES, "members-phone")
    finally:
        phone.close()


def test_failed_logins_are_limited_per_client(base: str) -> None:
    """Last in the module: it leaves 127.0.0.1 blocked for the rest of the window
    (long, so a loaded machine's slow password checks cannot let failures age out)."""
    with httpx.Client(base_url=base, timeout=30) as http:
        answers = []
        for _ in range(AUTH_FAILURES):  # the login test's failure may count already
            answers.append(http_login(http, "guess@example.test", "wrong guess 123"))
            if answers[-1].status_code == 429:
                break
        assert {a.status_code for a in answers[:-1]} <= {401}
        refused = http_login(http, ADMIN, PASSWORD)  # the right password, too late
        assert refused.status_code == 429, refused.text
        assert "too many failed logins" in refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert "mf_session" not in http.cookies
