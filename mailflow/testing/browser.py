"""A headless Chromium for the web UI tests: Debian's, driven by Playwright.

Playwright's own browser download is not reachable from the machines the tests run on,
so it is pointed at ``/usr/bin/chromium`` (Debian's ``chromium`` package, which
``.ci/run`` installs when it is missing).  The helpers log in as a person would and
write the screenshots ``docs/ui.md`` shows.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import httpx
    from playwright.sync_api import Browser, Page, Playwright

CHROMIUM: Final = Path("/usr/bin/chromium")
DESKTOP: Final = {"width": 1200, "height": 800}
PHONE: Final = {"width": 375, "height": 740}
_CSRF_FIELD: Final = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


def chromium_problem() -> str | None:
    """Why the UI tests cannot run here, or None."""
    if not CHROMIUM.exists():
        return (f"{CHROMIUM} is missing: install Debian's chromium package "
                "(apt-get install chromium), as .ci/run does")
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the Python package playwright is missing: pip install -e '.[dev]'"
    return None


def launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                      args=["--no-sandbox", "--disable-gpu"])


def login(page: Page, base_url: str, email: str, password: str) -> None:
    """Log in through the login form; returns on the page it leads to."""
    page.goto(f"{base_url}/ui/login")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()


def screenshot(page: Page, folder: Path, name: str) -> Path:
    """The visible part of ``page`` as ``folder/ui-NAME.png`` (the docs' images)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ui-{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path


def csrf_of(html: str) -> str:
    """The CSRF token of the first form in a page."""
    found = _CSRF_FIELD.search(html)
    if found is None:
        raise AssertionError(f"no CSRF token in the page:\n{html[:2000]}")
    return found.group(1)


def http_login(client: httpx.Client, email: str, password: str) -> httpx.Response:
    """Log ``client`` (with a cookie jar) in through the form, as a browser does."""
    form = client.get("/ui/login")
    return client.post("/ui/login", data={"csrf_token": csrf_of(form.text), "email": email,
                                          "password": password, "next": "/ui/"})
