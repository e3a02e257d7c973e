"""The users and API tokens pages over HTTP (httpx's ASGI transport, a real store on
SQLite and PostgreSQL, no browser): who may see them, the form's field errors, a token's
secret shown once and working as a bearer token until it is revoked, the audit log."""

from __future__ import annotations

import re

import httpx

from mailflow.testing.browser import csrf_of
from tests import test_ui_ops_http
from tests.test_ui_ops_http import World

world = test_ui_ops_http.world  # the fixture: the ops pages' users, lists and sessions

NEW_PASSWORD = "a long new password"
SECRET = re.compile(r'value="(mf_[^"]+)"')


async def log_in(world: World, email: str, password: str) -> httpx.Response:
    """A fresh browser logging in through the login form."""
    transport = httpx.ASGITransport(app=world.harness.app, client=("192.0.2.8", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as client:
        form = await client.get("/ui/login")
        await client.post("/ui/login", data={"csrf_token": csrf_of(form.text), "email": email,
                                             "password": password, "next": "/ui/"})
        return await client.get("/ui/tokens")


async def api_me(world: World, secret: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=world.harness.app, client=("192.0.2.9", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as client:
        return await client.get("/api/v1/me", headers={"Authorization": f"Bearer {secret}"})


async def test_an_admin_adds_a_user_who_can_then_log_in(world: World) -> None:
    assert (await log_in(world, "new@example.test", NEW_PASSWORD)).status_code == 303
    added = await world.post("admin", "/ui/users", {
        "email": "new@example.test", "password": NEW_PASSWORD, "password2": NEW_PASSWORD,
        "admin": "on"})
    assert added.status_code == 303 and added.headers["location"] == "/ui/users"
    page = await world.clients["admin"].get("/ui/users")
    assert "new@example.test" in page.text and "Added new@example.test." in page.text
    logged_in = await log_in(world, "new@example.test", NEW_PASSWORD)
    assert logged_in.status_code == 200 and "Your tokens." not in logged_in.text
    user = world.harness.access.store.user_with_hash("new@example.test")
    assert user is not None and user[0].is_admin
    assert ("root@example.test", "user.add", "new@example.test") in world.audit()


async def test_a_bad_address_or_password_shows_the_field_error(world: World) -> None:
    answer = await world.post("admin", "/ui/users", {
        "email": "not an address", "password": "short", "password2": "other"})
    assert answer.status_code == 422
    for field in ("email", "password", "password2"):
        assert f'id="error-{field}"' in answer.text, field
    assert 'value="not an address"' in answer.text
    assert "short" not in re.findall(r'name="password2?"[^>]*', answer.text)[0]
    assert "not an address" not in {u.email for u in world.harness.access.users()}
    taken = await world.post("admin", "/ui/users", {
        "email": "ann@example.test", "password": NEW_PASSWORD, "password2": NEW_PASSWORD})
    assert taken.status_code == 422 and 'id="error-email"' in taken.text
    assert not [a for a in world.audit() if a[1] == "user.add"]


async def test_only_a_site_admin_sees_or_changes_users(world: World) -> None:
    owner = world.clients["owner"]
    assert (await owner.get("/ui/users")).status_code == 403
    refused = await world.post("owner", "/ui/users", {
        "email": "new@example.test", "password": NEW_PASSWORD, "password2": NEW_PASSWORD})
    assert refused.status_code == 403
    assert (await world.post("owner", "/ui/users/mod@example.test/remove")).status_code == 403
    assert 'href="/ui/users"' not in (await owner.get("/ui/tokens")).text
    assert 'href="/ui/users"' in (await world.clients["admin"].get("/ui/tokens")).text
    assert world.harness.access.store.user_with_hash("new@example.test") is None
    assert world.harness.access.store.user_with_hash("mod@example.test") is not None


async def test_an_admin_gives_and_takes_a_role_and_removes_a_user(world: World) -> None:
    given = await world.post("admin", "/ui/users/mod@example.test/role",
                             {"list": "other@example.test", "role": "owner"})
    assert given.status_code == 303
    roles = world.harness.access.store.roles_of("mod@example.test")
    assert roles.get("other@example.test") == "owner"
    taken = await world.post("admin", "/ui/users/mod@example.test/role",
                             {"list": "other@example.test", "role": "none"})
    assert taken.status_code == 303
    assert "other@example.test" not in world.harness.access.store.roles_of(
        "mod@example.test")
    removed = await world.post("admin", "/ui/users/mod@example.test/remove")
    assert removed.status_code == 303
    assert world.harness.access.store.user_with_hash("mod@example.test") is None
    log = world.audit()
    for entry in (("root@example.test", "role.owner", "other@example.test"),
                  ("root@example.test", "role.remove", "other@example.test"),
                  ("root@example.test", "user.remove", "mod@example.test")):
        assert entry in log, entry


async def test_a_token_works_is_shown_once_and_stops_when_revoked(world: World) -> None:
    created = await world.post("owner", "/ui/tokens", {"scope": "read", "label": "ci"})
    assert created.status_code == 200 and "shown only this once" in created.text
    found = SECRET.search(created.text)
    assert found is not None
    secret = found.group(1)
    me = await api_me(world, secret)
    assert me.status_code == 200
    assert me.json()["actor"] == "ann@example.test" and me.json()["scope"] == "read"
    listing = await world.clients["owner"].get("/ui/tokens")
    assert listing.status_code == 200 and "ci" in listing.text
    assert secret not in listing.text
    token_id = world.harness.access.tokens("ann@example.test")[0].id
    # Another user sees nothing of it and cannot revoke it; the admin sees it.
    assert f"/ui/tokens/{token_id}/revoke" not in (
        await world.clients["other_owner"].get("/ui/tokens")).text
    assert f"/ui/tokens/{token_id}/revoke" in (
        await world.clients["admin"].get("/ui/tokens")).text
    await world.post("other_owner", f"/ui/tokens/{token_id}/revoke")
    assert (await api_me(world, secret)).status_code == 200
    revoked = await world.post("owner", f"/ui/tokens/{token_id}/revoke")
    assert revoked.status_code == 303
    assert (await api_me(world, secret)).status_code == 401
    log = world.audit()
    assert ("ann@example.test", "token.create", "ann@example.test") in log
    assert ("ann@example.test", "token.revoke", str(token_id)) in log
    assert ("bob@example.test", "token.revoke", str(token_id)) not in log


async def test_a_bad_scope_shows_the_field_error(world: World) -> None:
    answer = await world.post("owner", "/ui/tokens", {"scope": "admin", "label": "x"})
    assert answer.status_code == 422 and 'id="error-scope"' in answer.text
    assert world.harness.access.tokens("ann@example.test") == []
