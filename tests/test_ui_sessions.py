"""Web UI sessions over httpx's ASGI transport against a real store (SQLite,
PostgreSQL): their end, logout, what the table keeps, the cookie's flags, where a
login may lead.  The browser tests (test_ui.py) show the pages themselves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import select

from mailflow.store import Engines
from mailflow.store.tables import ui_sessions
from mailflow.testing.api import ApiHarness, api_app
from mailflow.testing.browser import csrf_of
from mailflow.testing.clock import FakeClock
from mailflow.web.ui.deps import UiOptions

ADMIN, PASSWORD = "root@example.test", "correct horse battery"
LIFETIME = 600.0


@dataclass
class Site:
    harness: ApiHarness
    clock: FakeClock
    engines: Engines

    def client(self, scheme: str = "http") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.harness.app, client=("192.0.2.7", 4000))
        return httpx.AsyncClient(transport=transport, base_url=f"{scheme}://relay.test")

    def stored_sessions(self) -> list[str]:
        with self.engines.reader.connect() as conn:
            return list(conn.scalars(select(ui_sessions.c.digest)))


@pytest.fixture
async def site(engines: Engines) -> AsyncIterator[Site]:
    clock = FakeClock()
    with api_app(engines, clock=clock, ui=UiOptions(session_lifetime=LIFETIME)) as harness:
        harness.access.add_user(ADMIN, PASSWORD, admin=True)
        yield Site(harness, clock, engines)


async def log_in(client: httpx.AsyncClient, next_page: str = "/ui/") -> httpx.Response:
    form = await client.get("/ui/login")
    return await client.post("/ui/login", data={
        "csrf_token": csrf_of(form.text), "email": ADMIN, "password": PASSWORD,
        "next": next_page})


async def test_a_session_ends_after_its_lifetime_and_ended_ones_are_purged(site: Site
                                                                           ) -> None:
    async with site.client() as client:
        assert (await log_in(client)).status_code == 303
        assert (await client.get("/ui/")).status_code == 200
        site.clock.advance(LIFETIME + 1)
        gone = await client.get("/ui/lists")
        assert gone.status_code == 303
        assert gone.headers["location"] == "/ui/login?next=/ui/lists"
        assert len(site.stored_sessions()) == 1  # ended, still there until a login
        assert (await log_in(client)).status_code == 303
        assert len(site.stored_sessions()) == 1  # the old one purged, the new one kept
        assert (await client.get("/ui/")).status_code == 200


async def test_logout_ends_the_session_on_the_server(site: Site) -> None:
    async with site.client() as client:
        await log_in(client)
        secret = client.cookies["mf_session"]
        page = await client.get("/ui/")
        out = await client.post("/ui/logout", data={"csrf_token": csrf_of(page.text)})
        assert out.status_code == 303 and "mf_session" not in client.cookies
        assert site.stored_sessions() == []
    async with site.client() as replay:  # the old cookie, kept by someone
        replay.cookies.set("mf_session", secret, domain="relay.test", path="/ui")
        assert (await replay.get("/ui/")).status_code == 303
    entries = site.harness.access.audit(5)
    assert [(e.actor, e.action) for e in entries][:2] == [
        (ADMIN, "session.logout"), (ADMIN, "session.login")]


async def test_the_store_keeps_only_a_digest_and_the_cookie_is_secure_over_https(
        site: Site) -> None:
    async with site.client("https") as client:
        answer = await log_in(client)
        cookie = answer.headers["set-cookie"]
        secret = client.cookies["mf_session"]
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" in cookie
        assert f"Max-Age={int(LIFETIME)}" in cookie and "Path=/ui" in cookie
        [digest] = site.stored_sessions()
        assert secret not in digest and len(digest) == 64
    async with site.client("http") as plain:
        assert "Secure" not in (await log_in(plain)).headers["set-cookie"]


@pytest.mark.parametrize("target", ["//evil.example/ui/", "https://evil.example/",
                                    "/api/v1/lists", "/ui\\..\\x"])
async def test_a_login_leads_only_to_a_page_of_the_ui(site: Site, target: str) -> None:
    async with site.client() as client:
        answer = await log_in(client, target)
        assert answer.status_code == 303 and answer.headers["location"] == "/ui/"
        assert (await log_in(client, "/ui/lists?q=a")).headers["location"] == "/ui/lists?q=a"


async def test_a_removed_user_is_logged_out(site: Site) -> None:
    async with site.client() as client:
        await log_in(client)
        site.harness.access.remove_user(ADMIN)
        assert site.stored_sessions() == []
        assert (await client.get("/ui/")).status_code == 303


async def test_the_login_form_needs_its_own_token(site: Site) -> None:
    async with site.client() as client:
        refused = await client.post("/ui/login", data={"email": ADMIN, "password": PASSWORD})
        assert refused.status_code == 403 and "mf_session" not in client.cookies
        assert refused.headers["content-type"].startswith("text/html")


async def test_a_new_login_ends_the_session_the_browser_had(site: Site) -> None:
    async with site.client() as client:
        await log_in(client)
        [first] = site.stored_sessions()
        await log_in(client)
        assert site.stored_sessions() != [first] and len(site.stored_sessions()) == 1


async def test_a_bad_query_is_an_html_page_in_the_ui_and_a_problem_in_the_api(site: Site
                                                                               ) -> None:
    async with site.client() as client:
        await log_in(client)
        page = await client.get("/ui/audit", params={"before": "x"})
        assert page.status_code == 422 and page.headers["content-type"].startswith("text/html")
        assert "before" in page.text
        api = await client.get("/api/v1/audit", params={"cursor": "x" * 2000})
        assert api.headers["content-type"] == "application/problem+json"


async def test_every_change_in_the_ui_needs_the_csrf_token(site: Site) -> None:
    """Every non-GET route under /ui, present and to come (a router dependency)."""
    from fastapi.routing import APIRoute

    from mailflow.web.ui.setup import ROUTERS

    routes = [(method, "/ui" + route.path) for router in ROUTERS for route in router.routes
              if isinstance(route, APIRoute) for method in route.methods - {"GET", "HEAD"}]
    assert len(routes) >= 10
    async with site.client() as client:
        await log_in(client)
        for method, path in routes:
            url = path.replace("{", "").replace("}", "")  # {address} -> address
            answer = await client.request(method, url, data={"name": "x"})
            assert answer.status_code == 403, (method, path, answer.status_code)
            assert "CSRF token" in answer.text
