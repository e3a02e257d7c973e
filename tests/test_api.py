"""The REST API over httpx's ASGI transport against a real store (SQLite, PostgreSQL):
every endpoint, pagination, CSV in and out, problem details, and who may do what."""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from argon2 import PasswordHasher

from mailflow.model import MessageStatus
from mailflow.store import Engines
from mailflow.testing.api import ApiHarness, api_app

PROBLEM = "application/problem+json"
# The owner and moderator of team@example.test: on its roster with their roles (and
# disabled, as ``user role`` adds them), so the roster's pages show them too.
TEAM_STAFF = ("ann@example.test", "mod@example.test")


def without_staff(found: list[str]) -> list[str]:
    return [a for a in found if a not in TEAM_STAFF]


@dataclass
class World:
    harness: ApiHarness
    client: httpx.AsyncClient
    admin: str          # a site admin's write token
    admin_read: str     # a site admin's read token
    owner: str          # owns team@example.test, moderates other@example.test
    other_owner: str    # owns other@example.test
    moderator: str      # moderates team@example.test

    async def call(self, method: str, path: str, token: str | None = None, *,
                   headers: dict[str, str] | None = None, **kwargs: object
                   ) -> httpx.Response:
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        return await self.client.request(method, f"/api/v1{path}", headers=sent,
                                         **kwargs)  # type: ignore[arg-type]


def _token(harness: ApiHarness, email: str | None, scope: str = "write") -> str:
    return harness.access.create_token(email, scope)[1]


PASSWORD = "correct horse battery"


@functools.cache
def password_hash() -> str:
    """One argon2 hash for every user the tests make (each costs a login's time)."""
    return PasswordHasher().hash(PASSWORD)


@pytest.fixture
async def world(engines: Engines) -> AsyncIterator[World]:
    with api_app(engines, max_failures=3) as harness:
        directory, access = harness.directory, harness.access
        directory.add_domain("example.test")
        for address in ("team@example.test", "other@example.test"):
            directory.create_list(address)
        for email, admin in (("root@example.test", True), ("ann@example.test", False),
                             ("bob@example.test", False), ("mod@example.test", False)):
            access.store.add_user(email, password_hash(), admin, 0.0)
        access.set_list_role("ann@example.test", "team@example.test", "owner")
        access.set_list_role("ann@example.test", "other@example.test", "moderator")
        access.set_list_role("bob@example.test", "other@example.test", "owner")
        access.set_list_role("mod@example.test", "team@example.test", "moderator")
        transport = httpx.ASGITransport(app=harness.app, client=("192.0.2.7", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as c:
            yield World(harness, c, _token(harness, "root@example.test"),
                        _token(harness, "root@example.test", "read"),
                        _token(harness, "ann@example.test"),
                        _token(harness, "bob@example.test"),
                        _token(harness, "mod@example.test"))


def problem_of(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, object] = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


# -- domains and lists --------------------------------------------------------------------

async def test_domains_are_listed_added_and_removed_by_a_site_admin(world: World) -> None:
    created = await world.call("POST", "/domains", world.admin, json={"name": "New.Test"})
    assert created.status_code == 201 and created.json()["name"] == "new.test"
    problem_of(await world.call("POST", "/domains", world.admin, json={"name": "new.test"}),
               409)
    problem_of(await world.call("POST", "/domains", world.admin, json={"name": "bad domain"}),
               422)
    problem_of(await world.call("POST", "/domains", world.owner, json={"name": "x.test"}), 403)
    page = (await world.call("GET", "/domains", world.owner)).json()
    assert [d["name"] for d in page["items"]] == ["example.test", "new.test"]
    problem_of(await world.call("DELETE", "/domains/example.test", world.admin), 409)
    assert (await world.call("DELETE", "/domains/new.test", world.admin)).status_code == 204
    problem_of(await world.call("DELETE", "/domains/new.test", world.admin), 404)


async def test_lists_with_their_settings(world: World) -> None:
    made = await world.call("POST", "/lists", world.admin, json={
        "address": "Fwd@Example.test", "kind": "alias", "name": "Forward", "priority": 5})
    assert made.status_code == 201
    assert made.json().items() >= {
        "address": "fwd@example.test", "kind": "alias", "name": "Forward", "priority": 5,
        "forward_style": "resend", "member_count": 0, "posting": "open",
        "subscription": "confirm"}.items()
    opened = await world.call("PATCH", "/lists/team@example.test", world.owner,
                              json={"subscription": "approve"})
    assert opened.status_code == 200 and opened.json()["subscription"] == "approve"
    assert (await world.call("GET", "/lists/team@example.test", world.owner)
            ).json()["subscription"] == "approve"
    refused = problem_of(await world.call("PATCH", "/lists/fwd@example.test", world.admin,
                                          json={"subscription": "open"}), 422)
    assert "subscriptions and their welcome and goodbye mail" in str(refused["detail"])
    problem_of(await world.call("PATCH", "/lists/team@example.test", world.owner,
                                json={"subscription": "sometimes"}), 422)
    changed = await world.call("PATCH", "/lists/fwd@example.test", world.admin,
                               json={"forward_style": "fwd", "name": "Fwd"})
    assert changed.json()["forward_style"] == "fwd" and changed.json()["name"] == "Fwd"
    # the directory's rule, not a copy of it: a list cannot forward as fwd
    refused = problem_of(await world.call("PATCH", "/lists/team@example.test", world.owner,
                                          json={"forward_style": "fwd"}), 422)
    assert "forward style fwd is for aliases" in str(refused["detail"])
    problem_of(await world.call("PATCH", "/lists/team@example.test", world.owner,
                                json={"name": "Evil\r\nBcc: x@y.test"}), 422)
    shown = (await world.call("GET", "/lists?kind=alias", world.admin)).json()
    assert [item["address"] for item in shown["items"]] == ["fwd@example.test"]
    deleted = await world.call("DELETE", "/lists/fwd@example.test", world.admin)
    assert deleted.json() == {"address": "fwd@example.test", "failed_deliveries": 0}
    problem_of(await world.call("GET", "/lists/fwd@example.test", world.admin), 404)


def test_the_list_patch_takes_every_option_of_list_update() -> None:
    """The API model and the command grow together: a new option fails this test until
    the API takes it too."""
    from mailflow.cli import list_update
    from mailflow.web.api.lists import ListChange, ListOut

    files = {f"{part}_file": f"{part}_template"
             for part in ("header", "footer", "welcome", "goodbye")}
    options = {files.get(p.name, p.name) for p in list_update.params
               if p.name not in ("address", "help")}
    assert options - set(ListChange.model_fields) == set()
    assert options - set(ListOut.model_fields) == set()


async def test_every_list_setting_is_read_and_changed_through_the_directory(
        world: World) -> None:
    path = "/lists/team@example.test"
    changes = {"dmarc": "always", "posting": "moderated", "non_member_action": "hold",
               "hold_days": 3, "subject_prefix": "[team]", "reply_to": "list",
               "header_template": "Hi {{ member.address }}", "footer_template": "--\nbye",
               "archive_url": "https://archive.example.test/team", "personalize": True,
               "bounce_threshold": 2.5, "priority": 7}
    changed = await world.call("PATCH", path, world.owner, json=changes)
    assert changed.status_code == 200, changed.text
    shown = (await world.call("GET", path, world.moderator)).json()
    assert shown.items() >= changes.items()
    assert shown["list_id"] == "team.example.test"
    assert shown["bounces_address"] == "team-bounces@example.test"
    # each refusal in the directory's words, nothing changed
    for body, words in (
            ({"hold_days": 0}, "invalid hold time 0 days"),
            ({"reply_to": "not an address"}, "invalid Reply-To policy"),
            ({"bounce_threshold": 0.1}, "invalid bounce threshold"),
            ({"subject_prefix": "[x]\r\nBcc: y@z.test"}, "subject prefix"),
            ({"archive_url": "javascript:alert(1)"}, "invalid archive URL"),
            ({"footer_template": "{{ ''.__class__ }}"}, "footer template refused")):
        refused = problem_of(await world.call("PATCH", path, world.owner, json=body), 422)
        assert words in str(refused["detail"]), refused
    problem_of(await world.call("PATCH", path, world.owner, json={"posting": "all"}), 422)
    assert (await world.call("GET", path, world.owner)).json() == shown
    await world.call("POST", "/lists", world.admin, json={"address": "a@example.test",
                                                          "kind": "alias"})
    refused = problem_of(await world.call("PATCH", "/lists/a@example.test", world.admin,
                                          json={"subject_prefix": "[a]"}), 422)
    assert "is not a list" in str(refused["detail"])
    # who may: the owner; not a moderator, a read token, another list's owner
    problem_of(await world.call("PATCH", path, world.moderator, json={"hold_days": 5}), 403)
    problem_of(await world.call("PATCH", path, world.admin_read, json={"hold_days": 5}), 403)
    problem_of(await world.call("PATCH", path, world.other_owner, json={"hold_days": 5}),
               404)
    entry = world.harness.access.audit(1, target="team@example.test")[0]
    assert entry.action == "list.update" and "header_template=(23 characters)" in entry.detail


async def test_an_owner_sees_and_changes_only_their_lists(world: World) -> None:
    mine = (await world.call("GET", "/lists", world.other_owner)).json()
    assert [item["address"] for item in mine["items"]] == ["other@example.test"]
    # another owner's list is as absent as one that does not exist
    for method, path, body in (
            ("GET", "/lists/team@example.test", None),
            ("PATCH", "/lists/team@example.test", {"name": "mine now"}),
            ("GET", "/lists/team@example.test/members", None),
            ("POST", "/lists/team@example.test/members", {"members": [{"address": "x@y.test"}]}),
            ("GET", "/lists/team@example.test/filters", None),
            ("PUT", "/lists/team@example.test/autoreply", {"body": "away"})):
        problem_of(await world.call(method, path, world.other_owner, json=body), 404)
    # a moderator reads but does not change; only a site admin creates or deletes lists
    assert (await world.call("GET", "/lists/other@example.test", world.owner)).status_code == 200
    problem_of(await world.call("PATCH", "/lists/other@example.test", world.owner,
                                json={"name": "x"}), 403)
    problem_of(await world.call("DELETE", "/lists/team@example.test", world.owner), 403)
    problem_of(await world.call("POST", "/lists", world.owner,
                                json={"address": "new@example.test"}), 403)
    assert (await world.call("PATCH", "/lists/team@example.test", world.owner,
                             json={"name": "Team"})).json()["name"] == "Team"


async def test_roles_go_with_a_deleted_list(world: World) -> None:
    """A list made again at the same address (or with the same id) is nobody's yet."""
    assert (await world.call("DELETE", "/lists/other@example.test", world.admin)
            ).status_code == 200
    assert (await world.call("POST", "/lists", world.admin,
                             json={"address": "other@example.test"})).status_code == 201
    problem_of(await world.call("GET", "/lists/other@example.test", world.other_owner), 404)
    assert (await world.call("GET", "/me", world.other_owner)).json()["lists"] == {}


async def test_a_read_token_reads_but_changes_nothing(world: World) -> None:
    assert (await world.call("GET", "/lists", world.admin_read)).status_code == 200
    body = problem_of(await world.call("POST", "/domains", world.admin_read,
                                       json={"name": "x.test"}), 403)
    assert "read" in str(body["detail"])
    problem_of(await world.call("DELETE", "/lists/team@example.test/members/a@x.test",
                                world.admin_read), 403)
    assert [d.name for d in world.harness.directory.domains()] == ["example.test"]


# -- members ------------------------------------------------------------------------------

async def test_members_are_paged_by_cursor_and_searched(world: World) -> None:
    world.harness.directory.import_members(
        "team@example.test", [(f"m{i:03d}@x.test", "Zed" if i == 7 else "") for i in range(25)])
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        params = {"limit": 10} | ({"cursor": cursor} if cursor else {})
        page = (await world.call("GET", "/lists/team@example.test/members", world.owner,
                                 params=params)).json()
        seen += [m["address"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["ann@example.test"] + [f"m{i:03d}@x.test" for i in range(25)] + [
        "mod@example.test"]
    found = (await world.call("GET", "/lists/team@example.test/members", world.owner,
                              params={"q": "zED"})).json()
    assert [m["address"] for m in found["items"]] == ["m007@x.test"]
    literal = (await world.call("GET", "/lists/team@example.test/members", world.owner,
                                params={"q": "m_0"})).json()
    assert literal["items"] == []  # _ is a character here, not LIKE's wildcard
    problem_of(await world.call("GET", "/lists/team@example.test/members", world.owner,
                                params={"cursor": "%%%"}), 422)
    problem_of(await world.call("GET", "/lists/team@example.test/members", world.owner,
                                params={"limit": 0}), 422)


async def test_members_are_added_and_removed(world: World) -> None:
    added = await world.call("POST", "/lists/team@example.test/members", world.owner, json={
        "members": [{"address": "Ann@X.test", "name": "Ann"}, {"address": "cy@x.test"}]})
    assert added.json() == {"added": 2, "existing": 0, "renamed": 0}
    problem_of(await world.call("POST", "/lists/team@example.test/members", world.owner,
                                json={"members": [{"address": "team@example.test"}]}), 422)
    assert (await world.call("DELETE", "/lists/team@example.test/members/ann@x.test",
                             world.owner)).status_code == 204
    problem_of(await world.call("DELETE", "/lists/team@example.test/members/ann@x.test",
                                world.owner), 404)
    assert without_staff([m.address for m in world.harness.directory.members(
        "team@example.test")]) == ["cy@x.test"]


async def test_a_member_shows_its_role_and_bounces_and_is_changed(world: World,
                                                                   engines: Engines) -> None:
    base = "/lists/team@example.test/members"
    added = await world.call("POST", base, world.owner, json={
        "members": [{"address": "Lee@X.test", "name": "Lee"}], "role": "moderator"})
    assert added.json() == {"added": 1, "existing": 0, "renamed": 0}
    from sqlalchemy import update

    from mailflow.store.tables import members

    with engines.writer.begin() as conn:
        conn.execute(update(members).where(members.c.address == "lee@x.test").values(
            status="disabled", bounce_score=5.5, last_bounce_at=1234.0))
    shown = (await world.call("GET", f"{base}/lee@x.test", world.moderator)).json()
    assert shown | {"created_at": 0} == {
        "address": "lee@x.test", "name": "Lee", "status": "disabled", "role": "moderator",
        "created_at": 0, "bounce_score": 5.5, "last_bounce_at": 1234.0}
    page = (await world.call("GET", base, world.owner)).json()["items"]
    lee = next(m for m in page if m["address"] == "lee@x.test")
    assert lee["role"] == "moderator" and lee["bounce_score"] == 5.5
    changed = await world.call("PATCH", f"{base}/lee@x.test", world.owner,
                               json={"role": "owner", "name": "Lee Q.", "status": "active"})
    assert changed.json().items() >= {"role": "owner", "name": "Lee Q.", "status": "active",
                                      "bounce_score": 0.0}.items()
    for body in ({"role": "boss"}, {"status": "disabled"}, {"name": "a\r\nb"}):
        problem_of(await world.call("PATCH", f"{base}/lee@x.test", world.owner, json=body),
                   422)
    problem_of(await world.call("PATCH", f"{base}/nobody@x.test", world.owner,
                                json={"role": "owner"}), 404)
    problem_of(await world.call("GET", f"{base}/nobody@x.test", world.owner), 404)
    problem_of(await world.call("PATCH", f"{base}/lee@x.test", world.moderator,
                                json={"role": "member"}), 403)
    problem_of(await world.call("PATCH", f"{base}/lee@x.test", world.admin_read,
                                json={"role": "member"}), 403)
    problem_of(await world.call("PATCH", f"{base}/lee@x.test", world.other_owner,
                                json={"role": "member"}), 404)
    entry = world.harness.access.audit(1)[0]
    assert (entry.action, entry.target) == ("member.update", "team@example.test")
    assert entry.detail.startswith("lee@x.test ")


async def test_a_csv_import_adds_the_valid_rows_and_reports_each_bad_one(world: World
                                                                         ) -> None:
    data = ('email,name\nok@x.test,Ok\nnot an address,\n'
            'also@x.test,"Evil\r\nBcc: v@e.test"\nteam@example.test,\nlast@x.test,Last\n')
    dry = await world.call("POST", "/lists/team@example.test/members/import?dry_run=true",
                           world.owner, content=data.encode(),
                           headers={"content-type": "text/csv"})
    assert dry.json()["dry_run"] and dry.json()["added"] == 0 and dry.json()["valid"] == 2
    assert without_staff([m.address for m in world.harness.directory.members(
        "team@example.test")]) == []
    report = (await world.call("POST", "/lists/team@example.test/members/import",
                               world.owner, content=data.encode())).json()
    assert (report["valid"], report["added"], report["existing"]) == (2, 2, 0)
    assert [(e["row"], e["address"]) for e in report["errors"]] == [
        (3, "not an address"), (4, "also@x.test"), (5, "team@example.test")]
    assert "control character U+000D" in report["errors"][1]["error"]
    problem_of(await world.call("POST", "/lists/team@example.test/members/import",
                                world.owner, content=b"\xff\xfe"), 422)
    problem_of(await world.call("POST", "/lists/team@example.test/members/import",
                                world.owner, content=b"name,phone\nx,y\n"), 422)


async def test_the_csv_export_reads_back_in(world: World) -> None:
    world.harness.directory.import_members(
        "team@example.test", [("b@x.test", "=HYPERLINK()"), ("a@x.test", "Ann, Jr.")])
    exported = await world.call("GET", "/lists/team@example.test/members/export", world.owner)
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(exported.text)))
    assert rows == [["email", "name", "status"], ["a@x.test", "Ann, Jr.", "active"],
                    ["ann@example.test", "", "disabled"],
                    ["b@x.test", "'=HYPERLINK()", "active"],
                    ["mod@example.test", "", "disabled"]]
    again = await world.call("POST", "/lists/other@example.test/members/import",
                             world.other_owner, content=exported.content)
    assert again.json()["added"] == 3 and again.json()["errors"] == []  # ann is there


# -- rules --------------------------------------------------------------------------------

async def test_sender_rules_by_scope_and_who_may_set_them(world: World) -> None:
    for body, token in (({"action": "block", "pattern": "*@spam.test"}, world.admin),
                        ({"action": "allow", "pattern": "friend@spam.test",
                          "target": "team@example.test"}, world.owner)):
        assert (await world.call("POST", "/sender-rules", token, json=body)).status_code == 201
    problem_of(await world.call("POST", "/sender-rules", world.owner,
                                json={"action": "block", "pattern": "*@x.test"}), 403)
    problem_of(await world.call("POST", "/sender-rules", world.admin,
                                json={"action": "block", "pattern": "a[b]"}), 422)
    everything = (await world.call("GET", "/sender-rules", world.admin)).json()["items"]
    assert [(r["scope"], r["pattern"]) for r in everything] == [
        ("global", "*@spam.test"), ("address", "friend@spam.test")]
    theirs = (await world.call("GET", "/sender-rules", world.owner)).json()["items"]
    assert [r["pattern"] for r in theirs] == ["friend@spam.test"]
    assert (await world.call("GET", "/sender-rules", world.other_owner)).json()["items"] == []
    removed = await world.call("DELETE", "/sender-rules", world.owner, params={
        "action": "allow", "pattern": "friend@spam.test", "for": "team@example.test"})
    assert removed.status_code == 204
    problem_of(await world.call("DELETE", "/sender-rules", world.owner, params={
        "action": "allow", "pattern": "friend@spam.test", "for": "team@example.test"}), 404)


async def test_filter_rules_and_the_autoreply_of_a_list(world: World) -> None:
    path = "/lists/team@example.test"
    first = await world.call("POST", f"{path}/filters", world.owner, json={
        "action": "hold", "header": "Subject", "matches": "(?i)buy"})
    assert first.status_code == 201 and first.json()["number"] == 1
    second = await world.call("POST", f"{path}/filters", world.owner, json={
        "action": "reject", "larger_than": 1000, "text": "too big"})
    assert second.json()["number"] == 2
    problem_of(await world.call("POST", f"{path}/filters", world.owner, json={
        "action": "hold", "body": "(unclosed"}), 422)
    problem_of(await world.call("POST", f"{path}/filters", world.owner, json={
        "action": "hold"}), 422)
    listed = (await world.call("GET", f"{path}/filters", world.moderator)).json()["items"]
    assert [(r["number"], r["condition"]) for r in listed] == [(1, "header"),
                                                               (2, "larger_than")]
    assert (await world.call("DELETE", f"{path}/filters/1", world.owner)).json()[
        "condition"] == "header"
    problem_of(await world.call("DELETE", f"{path}/filters/5", world.owner), 404)

    problem_of(await world.call("GET", f"{path}/autoreply", world.owner), 404)
    set_reply = await world.call("PUT", f"{path}/autoreply", world.owner, json={
        "body": "Back on $date", "starts": "2026-12-24", "once_per_days": 3})
    assert set_reply.status_code == 422  # $date is no template name
    set_reply = await world.call("PUT", f"{path}/autoreply", world.owner, json={
        "body": "Away until January", "starts": "2026-12-24", "once_per_days": 3})
    assert set_reply.json()["once_per_days"] == 3 and set_reply.json()["starts_at"]
    assert (await world.call("GET", f"{path}/autoreply", world.moderator)).json()[
        "body"] == "Away until January"
    assert (await world.call("DELETE", f"{path}/autoreply", world.owner)).status_code == 204


# -- held messages and the queue ------------------------------------------------------------

def _hold(engines: Engines, message_id: str, rcpt: str) -> None:
    from sqlalchemy import insert

    from mailflow.store.tables import messages

    with engines.writer.begin() as conn:
        conn.execute(insert(messages).values(
            id=message_id, mail_from="p@out.test", rcpt_tos=rcpt, blob="b" * 64, size=10,
            received_at=1.0, status=MessageStatus.HELD.value, updated_at=1.0))


async def test_held_messages_are_decided_by_their_lists_moderators(world: World,
                                                                   engines: Engines) -> None:
    _hold(engines, "00aa", "team@example.test")
    _hold(engines, "00bb", "other@example.test")
    seen = (await world.call("GET", "/held", world.moderator)).json()["items"]
    assert [h["id"] for h in seen] == ["00aa"]
    assert len((await world.call("GET", "/held", world.admin)).json()["items"]) == 2
    problem_of(await world.call("POST", "/held/00bb/release", world.moderator), 404)
    problem_of(await world.call("POST", "/held/not-an-id/release", world.moderator), 422)
    released = await world.call("POST", "/held/00aa/release", world.moderator)
    assert released.json().items() >= {"id": "00aa", "status": "released"}.items()
    assert (await world.call("POST", "/held/00bb/discard", world.other_owner)).json()[
        "status"] == "discarded"
    assert world.harness.directory.held_messages() == []


POST = (b"From: Pat Author <pat@out.test>\r\nTo: team@example.test\r\n"
        b"Subject: hello\r\nMessage-ID: <p1@out.test>\r\n\r\nbody\r\n")


def _hold_post(engines: Engines, message_id: str, rcpt: str) -> None:
    """A held post whose content is in its blob row (moderation reads its From:)."""
    from sqlalchemy import insert

    from mailflow.blobs import content_hash
    from mailflow.store.tables import blobs, messages

    digest = content_hash(POST + message_id.encode())
    with engines.writer.begin() as conn:
        conn.execute(insert(blobs).values(hash=digest, size=len(POST), refcount=1,
                                          created_at=1.0, content=POST))
        conn.execute(insert(messages).values(
            id=message_id, mail_from="bounce@out.test", rcpt_tos=rcpt, blob=digest,
            size=len(POST), received_at=2.0, status=MessageStatus.HELD.value,
            updated_at=2.0))


async def test_held_posts_are_approved_rejected_and_discarded_as_the_cli_does(
        world: World, engines: Engines) -> None:
    for message_id in ("0a01", "0a02", "0a03"):
        _hold_post(engines, message_id, "team@example.test")
    _hold_post(engines, "0b01", "other@example.test")
    mine = (await world.call("GET", "/held", world.moderator,
                             params={"list": "Team@Example.test"})).json()["items"]
    assert [h["id"] for h in mine] == ["0a01", "0a02", "0a03"]
    problem_of(await world.call("GET", "/held", world.moderator,
                                params={"list": "other@example.test"}), 404)
    problem_of(await world.call("GET", "/held", world.moderator,
                                params={"list": "nobody@example.test"}), 404)
    # a read token decides nothing; another list's moderator does not see it
    problem_of(await world.call("POST", "/held/0a01/approve", world.admin_read), 403)
    problem_of(await world.call("POST", "/held/0a01/approve", world.other_owner), 404)
    approved = await world.call("POST", "/held/0a01/approve", world.moderator,
                                json={"add_member": True})
    assert approved.json() == {"id": "0a01", "status": "approved",
                               "added_to": ["team@example.test"], "notified": None}
    member = world.harness.directory.get_member("team@example.test", "pat@out.test")
    assert member.role.value == "member"
    problem_of(await world.call("POST", "/held/0a01/approve", world.moderator), 404)
    # the reason goes to the author in a notice, checked by the CLI's own rule
    refused = problem_of(await world.call("POST", "/held/0a02/reject", world.moderator,
                                          json={"reason": "bad\x07bell"}), 422)
    assert "invalid reason: it contains a control character" in str(refused["detail"])
    rejected = await world.call("POST", "/held/0a02/reject", world.moderator,
                                json={"reason": "off topic"})
    assert rejected.json()["notified"] == "pat@out.test"
    from sqlalchemy import select

    from mailflow.store.tables import deliveries

    with engines.reader.connect() as conn:
        assert list(conn.scalars(select(deliveries.c.recipient))) == ["pat@out.test"]
    assert (await world.call("POST", "/held/0a03/discard", world.owner)).json()[
        "status"] == "discarded"
    assert [h.id for h in world.harness.directory.held_messages()] == ["0b01"]
    actions = [e.action for e in world.harness.access.audit(10)]
    assert actions[:3] == ["held.discard", "held.reject", "held.approve"]


async def test_deliveries_are_paged_newest_first_by_status(world: World,
                                                           engines: Engines) -> None:
    from sqlalchemy import insert

    from mailflow.store.tables import deliveries

    _hold(engines, "00cc", "team@example.test")
    with engines.writer.begin() as conn:
        conn.execute(insert(deliveries), [
            {"message_id": "00cc", "list_id": 1, "recipient": f"r{n}@x.test",
             "status": "failed" if n == 2 else "deferred", "due_at": 0.0,
             "created_at": float(n), "updated_at": float(n)} for n in range(5)])
    first = (await world.call("GET", "/deliveries", world.admin_read,
                              params={"status": "deferred", "limit": 2})).json()
    assert [d["recipient"] for d in first["items"]] == ["r4@x.test", "r3@x.test"]
    assert first["items"][0]["list_address"] == "team@example.test"
    rest = (await world.call("GET", "/deliveries", world.admin_read, params={
        "status": "deferred", "limit": 2, "cursor": first["next_cursor"]})).json()
    assert [d["recipient"] for d in rest["items"]] == ["r1@x.test", "r0@x.test"]
    assert rest["next_cursor"] is None


async def test_the_queue_is_read_by_site_admins(world: World) -> None:
    counts = (await world.call("GET", "/queue", world.admin_read)).json()
    assert counts["deliveries"]["queued"] == 0 and "held" in counts["messages"]
    page = (await world.call("GET", "/deliveries", world.admin_read,
                             params={"status": "deferred"})).json()
    assert page == {"items": [], "next_cursor": None}
    problem_of(await world.call("GET", "/deliveries", world.admin_read,
                                params={"status": "lost"}), 422)
    problem_of(await world.call("GET", "/queue", world.owner), 403)


async def test_bounces_are_read_by_their_lists_owners_and_moderators(world: World,
                                                                       engines: Engines
                                                                       ) -> None:
    from sqlalchemy import insert

    from mailflow.store.tables import bounce_events

    team = world.harness.directory.get_list("team@example.test").id
    other = world.harness.directory.get_list("other@example.test").id
    with engines.writer.begin() as conn:
        conn.execute(insert(bounce_events), [
            {"list_id": list_id, "address": f"b{n}@x.test", "kind": "permanent",
             "source": "dsn", "counted": True, "detail": "550 5.1.1", "created_at": n}
            for n, list_id in ((1.0, team), (2.0, team), (3.0, other))])
    every = (await world.call("GET", "/bounces", world.admin_read, params={"limit": 2})).json()
    assert [b["address"] for b in every["items"]] == ["b3.0@x.test", "b2.0@x.test"]
    rest = (await world.call("GET", "/bounces", world.admin_read,
                             params={"cursor": every["next_cursor"]})).json()
    assert [b["address"] for b in rest["items"]] == ["b1.0@x.test"]
    mine = (await world.call("GET", "/bounces", world.moderator,
                             params={"list": "team@example.test"})).json()["items"]
    assert [b["list"] for b in mine] == ["team@example.test"] * 2
    problem_of(await world.call("GET", "/bounces", world.moderator), 403)
    problem_of(await world.call("GET", "/bounces", world.other_owner,
                                params={"list": "team@example.test"}), 404)


async def test_suppressions_global_and_per_list(world: World) -> None:
    added = await world.call("POST", "/suppressions", world.admin, json={
        "address": "Gone@X.test", "reason": "left the company"})
    assert added.status_code == 201
    assert added.json()["suppression"].items() >= {
        "address": "gone@x.test", "list": None, "reason": "left the company"}.items()
    again = await world.call("POST", "/suppressions", world.admin, json={
        "address": "gone@x.test"})
    assert again.json()["added"] is False
    mine = await world.call("POST", "/suppressions", world.owner, json={
        "address": "quiet@x.test", "list": "team@example.test"})
    assert mine.json()["suppression"]["list"] == "team@example.test"
    # the global entries are a site admin's; a list's are its owner's
    problem_of(await world.call("POST", "/suppressions", world.owner, json={
        "address": "x@x.test"}), 403)
    problem_of(await world.call("POST", "/suppressions", world.moderator, json={
        "address": "x@x.test", "list": "team@example.test"}), 403)
    problem_of(await world.call("POST", "/suppressions", world.admin_read, json={
        "address": "x@x.test"}), 403)
    problem_of(await world.call("POST", "/suppressions", world.other_owner, json={
        "address": "x@x.test", "list": "team@example.test"}), 404)
    bad = problem_of(await world.call("POST", "/suppressions", world.admin, json={
        "address": "not an address"}), 422)
    assert "invalid address" in str(bad["detail"])
    world.harness.directory.suppress("gone@x.test", "other@example.test")
    first = (await world.call("GET", "/suppressions", world.admin_read,
                              params={"limit": 2})).json()
    rest = (await world.call("GET", "/suppressions", world.admin_read,
                             params={"limit": 2, "cursor": first["next_cursor"]})).json()
    assert [(e["address"], e["list"]) for e in first["items"] + rest["items"]] == [
        ("gone@x.test", None), ("gone@x.test", "other@example.test"),
        ("quiet@x.test", "team@example.test")]
    assert rest["next_cursor"] is None
    problem_of(await world.call("GET", "/suppressions", world.admin_read,
                                params={"cursor": "bm90YWJz"}), 422)
    theirs = (await world.call("GET", "/suppressions", world.moderator,
                               params={"list": "team@example.test"})).json()["items"]
    assert [e["address"] for e in theirs] == ["quiet@x.test"]
    problem_of(await world.call("DELETE", "/suppressions/quiet@x.test", world.owner), 403)
    assert (await world.call("DELETE", "/suppressions/quiet@x.test", world.owner,
                             params={"list": "team@example.test"})).status_code == 204
    problem_of(await world.call("DELETE", "/suppressions/quiet@x.test", world.owner,
                                params={"list": "team@example.test"}), 404)
    assert world.harness.directory.suppressions("team@example.test") == []


async def test_dkim_keys_are_a_site_admins_and_never_show_the_private_key(
        world: World) -> None:
    made = await world.call("POST", "/dkim-keys", world.admin, json={
        "domain": "Example.test", "selector": "s1"})
    assert made.status_code == 201, made.text
    key = made.json()
    assert key["dns_name"] == "s1._domainkey.example.test"
    assert key["dns_txt"].startswith("v=DKIM1; k=rsa; p=")
    stored = world.harness.directory.dkim_keys()[0]
    assert stored.private_key.strip()[:20] not in made.text and "PRIVATE" not in made.text
    problem_of(await world.call("POST", "/dkim-keys", world.admin, json={
        "domain": "example.test"}), 409)
    replaced = await world.call("POST", "/dkim-keys", world.admin, json={
        "domain": "example.test", "selector": "s2", "replace": True})
    assert replaced.json()["selector"] == "s2"
    problem_of(await world.call("POST", "/dkim-keys", world.admin, json={
        "domain": "example.test", "selector": "bad selector!", "replace": True}), 422)
    listed = await world.call("GET", "/dkim-keys", world.admin_read)
    assert [k["selector"] for k in listed.json()["items"]] == ["s2"]
    assert "PRIVATE" not in listed.text
    problem_of(await world.call("GET", "/dkim-keys", world.owner), 403)
    problem_of(await world.call("POST", "/dkim-keys", world.admin_read, json={
        "domain": "example.test"}), 403)
    assert (await world.call("DELETE", "/dkim-keys/example.test", world.admin)).json()[
        "selector"] == "s2"
    problem_of(await world.call("DELETE", "/dkim-keys/example.test", world.admin), 404)


def _deliveries(engines: Engines, message_id: str, list_id: int, rows: list[tuple[str, str]],
                now: float = 0.0) -> None:
    from sqlalchemy import insert

    from mailflow.store.tables import deliveries

    with engines.writer.begin() as conn:
        conn.execute(insert(deliveries), [
            {"message_id": message_id, "list_id": list_id, "recipient": recipient,
             "status": status, "due_at": now, "created_at": now, "updated_at": now}
            for recipient, status in rows])


async def test_queue_actions_as_the_cli_with_a_confirmed_delete(world: World,
                                                                engines: Engines) -> None:
    team = world.harness.directory.get_list("team@example.test").id
    other = world.harness.directory.get_list("other@example.test").id
    _hold(engines, "00dd", "team@example.test")
    _deliveries(engines, "00dd", team, [("a@x.test", "deferred"), ("b@y.test", "queued"),
                                        ("c@x.test", "delivered")])
    _deliveries(engines, "00dd", other, [("d@x.test", "deferred")])
    held = await world.call("POST", "/queue/hold", world.admin, json={"domain": "x.test"})
    assert held.json() == {"action": "hold", "changed": 2, "skipped": 1}
    counts = (await world.call("GET", "/queue", world.admin)).json()["deliveries"]
    assert counts["held"] == 2
    # an owner acts on the deliveries through their list, only
    released = await world.call("POST", "/queue/release", world.owner,
                                json={"list": "team@example.test"})
    assert released.json()["changed"] == 1
    problem_of(await world.call("POST", "/queue/release", world.owner, json={}), 403)
    problem_of(await world.call("POST", "/queue/release", world.owner,
                                json={"list": "nobody@example.test"}), 404)
    problem_of(await world.call("POST", "/queue/release", world.moderator,
                                json={"list": "team@example.test"}), 403)
    problem_of(await world.call("POST", "/queue/retry", world.admin_read,
                                json={"status": ["deferred"]}), 403)
    # the service's rules: a criterion is needed, a delete of many is confirmed
    empty = problem_of(await world.call("POST", "/queue/retry", world.admin, json={}), 422)
    assert "no deliveries selected" in str(empty["detail"])
    bad = problem_of(await world.call("POST", "/queue/retry", world.admin,
                                      json={"older_than": "soon"}), 422)
    assert "invalid duration" in str(bad["detail"])
    problem_of(await world.call("POST", "/queue/purge", world.admin,
                                json={"status": ["queued"]}), 422)
    many = problem_of(await world.call("POST", "/queue/delete", world.admin,
                                       json={"status": ["queued", "held"]}), 422)
    assert "confirm: true" in str(many["detail"])
    deleted = await world.call("POST", "/queue/delete", world.admin,
                               json={"status": ["queued", "held"], "confirm": True})
    assert deleted.json()["changed"] == 3
    one = await world.call("POST", "/queue/retry", world.admin, json={"ids": ["00dd"]})
    assert one.json() == {"action": "retry", "changed": 0, "skipped": 4}
    entry = world.harness.access.audit(1)[0]
    assert entry.action == "queue.retry" and "ids=1" in entry.detail


async def test_trace_and_stats_are_a_site_admins(world: World, engines: Engines) -> None:
    import time

    from sqlalchemy import insert

    from mailflow.ids import new_message_id
    from mailflow.store.tables import events, messages

    now = time.time()
    received = max(now // 3600 * 3600, now - 60)  # in this hour, so the last one counts it
    message_id = new_message_id(received)
    with engines.writer.begin() as conn:
        conn.execute(insert(messages).values(
            id=message_id, mail_from="s@out.test", rcpt_tos="team@example.test",
            blob="c" * 64, size=10, received_at=received, status="done",
            updated_at=now, header_id="<m1@out.test>"))
        conn.execute(insert(events).values(created_at=(received + now) / 2, kind="expanded",
                                           message_id=message_id, detail="2 deliveries"))
    team = world.harness.directory.get_list("team@example.test").id
    _deliveries(engines, message_id, team, [("a@x.test", "delivered"),
                                            ("b@x.test", "failed")], now)
    found = (await world.call("GET", "/trace", world.admin_read,
                              params={"q": "<m1@out.test>", "since": "1h"})).json()
    assert found["truncated"] is False
    [traced] = found["items"]
    assert traced["id"] == message_id and traced["mail_from"] == "s@out.test"
    assert [s["kind"] for s in traced["steps"]][:2] == ["received", "expanded"]
    assert sorted(d["status"] for d in traced["deliveries"]) == ["delivered", "failed"]
    none = (await world.call("GET", "/trace", world.admin,
                             params={"q": "s@out.test", "until": "2h"})).json()
    assert none == {"items": [], "truncated": False}
    problem_of(await world.call("GET", "/trace", world.admin,
                                params={"q": "x", "since": "yesterday"}), 422)
    problem_of(await world.call("GET", "/trace", world.owner, params={"q": "x"}), 403)

    stats = (await world.call("GET", "/stats", world.admin_read)).json()
    assert len(stats["hours"]) == 24
    last = stats["hours"][-1]
    assert last["start"] <= now < last["start"] + 3600
    assert (last["received"], last["delivered"], last["failed"]) == (1, 1, 1)
    assert sum(h["received"] for h in stats["hours"]) == 1
    assert stats["deliveries"]["delivered"] == 1 and stats["messages"]["done"] == 1
    problem_of(await world.call("GET", "/stats", world.admin, params={"hours": 0}), 422)
    problem_of(await world.call("GET", "/stats", world.owner), 403)


# -- access -------------------------------------------------------------------------------

async def test_no_token_or_a_wrong_one_is_401_and_repeated_failures_429(world: World) -> None:
    missing = problem_of(await world.call("GET", "/lists"), 401)
    assert "Bearer" in str(missing["detail"])
    for _ in range(3):
        wrong = await world.call("GET", "/lists", "mf_wrong")
        problem_of(wrong, 401)
        assert wrong.headers["www-authenticate"].startswith("Bearer")
    blocked = await world.call("GET", "/lists", world.admin)  # even a good one now
    problem_of(blocked, 429)
    assert int(blocked.headers["retry-after"]) >= 1


async def test_login_gives_a_token_and_is_rate_limited_per_account(world: World) -> None:
    made = await world.call("POST", "/tokens", json={
        "email": "bob@example.test", "password": PASSWORD, "scope": "read"})
    assert made.status_code == 201
    token = made.json()["token"]
    me = (await world.call("GET", "/me", token)).json()
    assert me == {"actor": "bob@example.test", "is_admin": False, "scope": "read",
                  "lists": {"other@example.test": "owner"}}
    listed = (await world.call("GET", "/tokens", world.other_owner)).json()
    assert {t["user"] for t in listed} == {"bob@example.test"} and len(listed) == 2
    assert all("token" not in t for t in listed)
    [login] = [t for t in listed if t["scope"] == "read"]
    problem_of(await world.call("DELETE", f"/tokens/{login['id']}", world.owner), 404)
    assert (await world.call("DELETE", f"/tokens/{login['id']}",
                             world.other_owner)).status_code == 204
    problem_of(await world.call("GET", "/me", token), 401)


async def login_from(world: World, address: str, password: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=world.harness.app, client=(address, 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as c:
        return await c.post("/api/v1/tokens", json={"email": "bob@example.test",
                                                    "password": password})


async def test_failed_logins_are_limited_per_account_from_any_address(world: World) -> None:
    for n in range(3):  # three addresses, one account: under each address's limit
        problem_of(await login_from(world, f"198.51.100.{n}", "guess guess guess"), 401)
    blocked = await login_from(world, "198.51.100.9", PASSWORD)  # right, but too late
    problem_of(blocked, 429)
    assert "for this account" in blocked.json()["detail"]
    assert (await world.call("POST", "/tokens", json={   # another account, as before
        "email": "ann@example.test", "password": PASSWORD})).status_code == 201


async def test_users_and_roles_are_a_site_admins(world: World) -> None:
    added = await world.call("POST", "/users", world.admin, json={
        "email": "new@example.test", "password": "long enough pass"})
    assert added.status_code == 201 and added.json()["is_admin"] is False
    problem_of(await world.call("POST", "/users", world.admin, json={
        "email": "short@example.test", "password": "short"}), 422)
    problem_of(await world.call("GET", "/users", world.owner), 403)
    assert (await world.call("PUT", "/users/new@example.test/lists/team@example.test",
                             world.admin, json={"role": "owner"})).status_code == 204
    new_token = _token(world.harness, "new@example.test")
    assert (await world.call("GET", "/lists/team@example.test", new_token)).status_code == 200
    assert (await world.call("DELETE", "/users/new@example.test/lists/team@example.test",
                             world.admin)).status_code == 204
    problem_of(await world.call("GET", "/lists/team@example.test", new_token), 404)
    assert (await world.call("DELETE", "/users/new@example.test", world.admin)
            ).status_code == 204
    problem_of(await world.call("GET", "/me", new_token), 401)


async def test_a_users_roles_are_their_addresss_roles_on_the_roster(world: World) -> None:
    """One source of truth: making a member owner gives that user the list; the
    shortcut (``user role``, ``PUT /users/…/lists/…``) sets the member's role."""
    directory = world.harness.directory
    base = "/lists/other@example.test/members"
    # mod@ moderates team only; bob (other's owner) makes mod@ a moderator of other
    problem_of(await world.call("GET", "/lists/other@example.test", world.moderator), 404)
    await world.call("POST", base, world.other_owner, json={
        "members": [{"address": "mod@example.test"}], "role": "moderator"})
    me = (await world.call("GET", "/me", world.moderator)).json()
    assert me["lists"] == {"team@example.test": "moderator", "other@example.test": "moderator"}
    assert (await world.call("GET", "/held", world.moderator,
                             params={"list": "other@example.test"})).status_code == 200
    problem_of(await world.call("PATCH", "/lists/other@example.test", world.moderator,
                                json={"priority": 1}), 403)
    await world.call("PATCH", f"{base}/mod@example.test", world.other_owner,
                     json={"role": "owner"})
    assert (await world.call("PATCH", "/lists/other@example.test", world.moderator,
                             json={"priority": 1})).status_code == 200
    await world.call("PATCH", f"{base}/mod@example.test", world.other_owner,
                     json={"role": "member"})
    problem_of(await world.call("GET", "/lists/other@example.test", world.moderator), 404)
    # the shortcut adds an address that is not a member disabled: it gets no mail
    assert (await world.call("PUT", "/users/root@example.test/lists/other@example.test",
                             world.admin, json={"role": "moderator"})).status_code == 204
    added = directory.get_member("other@example.test", "root@example.test")
    assert (added.role.value, added.status.value) == ("moderator", "disabled")
    assert (await world.call("DELETE", "/users/root@example.test/lists/other@example.test",
                             world.admin)).status_code == 204
    assert directory.get_member("other@example.test", "root@example.test").role.value == \
        "member"
    problem_of(await world.call("PUT", "/users/nobody@example.test/lists/other@example.test",
                                world.admin, json={"role": "owner"}), 404)


def test_list_roles_move_to_the_roster_without_sending_anyone_mail(database_url: str
                                                                   ) -> None:
    from sqlalchemy import text

    from mailflow.store import Repository, create_engines, upgrade_to_head
    from mailflow.store.access import AccessRepository
    from mailflow.store.migrate import upgrade

    engines = create_engines(database_url, pool_size=1)
    try:
        upgrade(engines.writer, "0017_users")
        with engines.writer.begin() as conn:
            for sql in (
                    "INSERT INTO domains (id, name, created_at) VALUES (1, 'example.test', 0)",
                    "INSERT INTO lists (id, domain_id, address, kind, name, priority, "
                    "created_at) VALUES (1, 1, 'team@example.test', 'list', '', 0, 0)",
                    "INSERT INTO members (list_id, address, status, created_at, role) VALUES "
                    "(1, 'ann@example.test', 'active', 0, 'member'), "
                    "(1, 'cy@example.test', 'active', 0, 'owner'), "
                    "(1, 'dee@example.test', 'active', 0, 'member')",
                    "INSERT INTO users (id, email, password_hash, is_admin, created_at) VALUES "
                    "(1, 'ann@example.test', 'h', false, 0), (2, 'bob@example.test', 'h', "
                    "false, 0), (3, 'cy@example.test', 'h', false, 0)",
                    "INSERT INTO list_roles (list_id, user_id, role) VALUES "
                    "(1, 1, 'owner'), (1, 2, 'moderator'), (1, 3, 'moderator')"):
                conn.execute(text(sql))
        upgrade_to_head(engines.writer)
        repo = Repository(engines)
        roster = {m.address: (m.role.value, m.status.value)
                  for m in repo.members("team@example.test")}
        assert roster == {"ann@example.test": ("owner", "active"),
                          "bob@example.test": ("moderator", "disabled"),
                          "cy@example.test": ("owner", "active"),  # kept the higher role
                          "dee@example.test": ("member", "active")}
        access = AccessRepository(engines)
        assert access.roles_of("bob@example.test") == {"team@example.test": "moderator"}
        assert access.roles_of("dee@example.test") == {}
        # who gets the list's mail is unchanged: bob, who only moderated it, does not
        team = repo.get_list("team@example.test")
        assert repo.moderators([team.id]) == {team.id: ["ann@example.test",
                                                        "cy@example.test"]}
        with engines.reader.connect() as conn:
            assert "list_roles" not in {t for (t,) in conn.execute(text(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = "
                "current_schema()" if not engines.is_sqlite else
                "SELECT name FROM sqlite_master WHERE type = 'table'"))}
    finally:
        engines.dispose()


async def test_every_change_is_in_the_audit_log(world: World) -> None:
    await world.call("POST", "/lists/team@example.test/members", world.owner,
                     json={"members": [{"address": "a@x.test"}]})
    await world.call("PATCH", "/lists/team@example.test", world.owner, json={"priority": 3})
    await world.call("POST", "/domains", world.admin, json={"name": "more.test"})
    await world.call("POST", "/domains", world.admin_read, json={"name": "refused.test"})
    page = (await world.call("GET", "/audit", world.admin_read, params={"limit": 2})).json()
    assert [(e["actor"], e["action"], e["target"]) for e in page["items"]] == [
        ("root@example.test", "domain.add", "more.test"),
        ("ann@example.test", "list.update", "team@example.test")]
    rest = (await world.call("GET", "/audit", world.admin_read,
                             params={"cursor": page["next_cursor"]})).json()
    assert [(e["action"], e["detail"]) for e in rest["items"]] == [("member.add", "a@x.test")]
    assert rest["next_cursor"] is None
    only = (await world.call("GET", "/audit", world.admin,
                             params={"actor": "ann@example.test"})).json()["items"]
    assert len(only) == 2
    problem_of(await world.call("GET", "/audit", world.owner), 403)


# -- problem details everywhere, monitoring, docs ---------------------------------------------

async def test_unknown_paths_wrong_methods_and_bad_bodies_are_problems(world: World) -> None:
    problem_of(await world.client.get("/nowhere"), 404)
    problem_of(await world.client.put("/healthz"), 405)
    body = problem_of(await world.call("POST", "/domains", world.admin, json={"nom": 1}), 422)
    assert body["errors"] == [{"location": "body.name", "message": "Field required"}]
    problem_of(await world.call("POST", "/domains", world.admin, content=b"{not json",
                                headers={"content-type": "application/json"}), 422)


async def test_monitoring_is_open_to_loopback_and_to_tokens(engines: Engines) -> None:
    for access, client, token, status in (("loopback", "127.0.0.1", None, 200),
                                          ("loopback", "192.0.2.7", None, 401),
                                          ("loopback", "192.0.2.7", "good", 200),
                                          ("token", "127.0.0.1", None, 401),
                                          ("open", "192.0.2.7", None, 200)):
        with api_app(engines, monitoring_access=access) as harness:  # type: ignore[arg-type]
            headers = {}
            if token:
                headers["Authorization"] = f"Bearer {_token(harness, None, 'read')}"
            transport = httpx.ASGITransport(app=harness.app, client=(client, 1234))
            async with httpx.AsyncClient(transport=transport, base_url="http://r.test") as c:
                for path in ("/metrics", "/v1/queue"):
                    got = await c.get(path, headers=headers)
                    assert got.status_code == status, (access, client, token, path)


async def test_the_docs_are_served_from_the_package(world: World) -> None:
    page = await world.client.get("/api/v1/docs")
    assert page.status_code == 200 and "<script>" not in page.text
    assert "//" not in page.text.replace("http://www.w3.org", "")  # no CDN, no other host
    assert "script-src" not in page.headers["content-security-policy"]  # 'self' only
    for asset in ("/api/v1/docs/static/swagger-ui-bundle.js",
                  "/api/v1/docs/static/swagger-ui.css", "/api/v1/docs/init.js"):
        assert (await world.client.get(asset)).status_code == 200, asset
    assert (await world.client.get("/docs")).status_code == 404
    schema = (await world.client.get("/api/v1/openapi.json")).json()
    assert "/api/v1/lists/{address}/members" in schema["paths"]
    error = schema["paths"]["/api/v1/domains"]["post"]["responses"]["422"]
    assert list(error["content"]) == [PROBLEM]
