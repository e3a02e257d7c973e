"""The moderation, trace, rules and queue pages over HTTP (httpx's ASGI transport, a
real store on SQLite and PostgreSQL, no browser): who may see and do what, CSRF, the
held post's frame and its policy, and the audit log."""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
from argon2 import PasswordHasher

from mailflow.blobs import content_hash
from mailflow.model import Event, InboundMessage, MessageStatus
from mailflow.services.commit import IngestBatch, store_batch
from mailflow.services.processor import expand_received
from mailflow.store import Engines
from mailflow.testing.api import ApiHarness, api_app
from mailflow.web.ui.deps import SESSION_COOKIE, csrf_token

PASSWORD = "correct horse battery"
HOSTILE = (b"From: Eve <eve@outside.test>\r\nTo: team@example.test\r\n"
           b"Subject: =?utf-8?q?Win_=3Cscript=3Ealert(1)=3C/script=3E?=\r\n"
           b"Message-ID: <held-1@outside.test>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/alternative; boundary=B\r\n\r\n"
           b"--B\r\nContent-Type: text/plain\r\n\r\nplain <b>text</b>\r\n"
           b"--B\r\nContent-Type: text/html\r\n\r\n<p onclick=x()>Hi<img src=https://evil.test/"
           b"p.gif><script>steal()</script></p>\r\n--B--\r\n")


@functools.cache
def password_hash() -> str:
    return PasswordHasher().hash(PASSWORD)


@dataclass
class World:
    harness: ApiHarness
    engines: Engines
    clients: dict[str, httpx.AsyncClient]
    csrf: dict[str, str]

    def held(self, message_id: str, rcpt: str, raw: bytes = HOSTILE,
             sender: str = "eve@outside.test") -> None:
        """A post held for ``rcpt``, its body in its blob row (as a small one is)."""
        digest = content_hash(raw)
        message = InboundMessage(message_id, sender, (rcpt,), digest, len(raw), 1000.0,
                                 "192.0.2.9", "client.test", "ESMTP",
                                 status=MessageStatus.HELD, header_id="<held-1@outside.test>")
        store_batch(self.harness.deps.runner.repo, IngestBatch(
            [message], bodies={digest: raw}, contents={digest: raw},
            events=[Event("held", f"{rcpt}: not a member", message_id)]), 1000.0,
            lambda: None)

    async def post(self, who: str, path: str, data: dict[str, str] | None = None, *,
                   csrf: bool = True) -> httpx.Response:
        form = dict(data or {})
        if csrf:
            form["csrf_token"] = self.csrf[who]
        return await self.clients[who].post(path, data=form)

    def audit(self) -> list[tuple[str, str, str]]:
        return [(e.actor, e.action, e.target) for e in self.harness.access.audit(100)]


@asynccontextmanager
async def _clients(harness: ApiHarness, users: dict[str, str]
                   ) -> AsyncIterator[tuple[dict[str, httpx.AsyncClient], dict[str, str]]]:
    clients: dict[str, httpx.AsyncClient] = {}
    csrf: dict[str, str] = {}
    transport = httpx.ASGITransport(app=harness.app, client=("192.0.2.7", 4000))
    try:
        for name, email in users.items():
            found = harness.access.store.user_with_hash(email)
            assert found is not None
            secret = harness.access.open_session(found[0], 3600.0)
            client = httpx.AsyncClient(transport=transport, base_url="http://relay.test")
            client.cookies.set(SESSION_COOKIE, secret, domain="relay.test", path="/ui")
            clients[name], csrf[name] = client, csrf_token(secret)
        yield clients, csrf
    finally:
        for client in clients.values():
            await client.aclose()


@pytest.fixture
async def world(engines: Engines) -> AsyncIterator[World]:
    with api_app(engines) as harness:
        directory, access = harness.directory, harness.access
        directory.add_domain("example.test")
        for address in ("team@example.test", "other@example.test"):
            directory.create_list(address)
        users = {"admin": "root@example.test", "owner": "ann@example.test",
                 "other_owner": "bob@example.test", "moderator": "mod@example.test"}
        for name, email in users.items():
            access.store.add_user(email, password_hash(), name == "admin", 0.0)
        access.set_list_role("ann@example.test", "team@example.test", "owner")
        access.set_list_role("bob@example.test", "other@example.test", "owner")
        access.set_list_role("mod@example.test", "team@example.test", "moderator")
        async with _clients(harness, users) as (clients, csrf):
            yield World(harness, engines, clients, csrf)


def still_held(world: World) -> list[str]:
    return [h.id for h in world.harness.directory.held_messages()]


# -- moderation ---------------------------------------------------------------------------

async def test_an_owner_cannot_see_or_decide_another_list_held_post(world: World) -> None:
    world.held("00aa", "team@example.test")
    world.held("00bb", "other@example.test")
    page = await world.clients["owner"].get("/ui/moderation")
    assert page.status_code == 200 and "/ui/moderation/00aa" in page.text
    assert "00bb" not in page.text
    assert (await world.clients["owner"].get("/ui/moderation/00bb")).status_code == 404
    assert (await world.clients["owner"].get("/ui/moderation/00bb/frame")).status_code == 404
    for action in ("approve", "reject", "discard"):
        refused = await world.post("owner", f"/ui/moderation/00bb/{action}")
        assert refused.status_code == 404, action
    assert sorted(still_held(world)) == ["00aa", "00bb"]
    assert not [a for a in world.audit() if a[1].startswith("held.")]


async def test_a_post_without_the_csrf_token_is_refused(world: World) -> None:
    world.held("00aa", "team@example.test")
    for path in ("/ui/moderation/00aa/approve", "/ui/moderation/00aa/discard",
                 "/ui/rules/team@example.test/filters", "/ui/queue/act"):
        refused = await world.post("owner", path, {"reason": "x"}, csrf=False)
        assert refused.status_code == 403, path
        wrong = await world.post("owner", path, {"csrf_token": world.csrf["other_owner"]},
                                 csrf=False)
        assert wrong.status_code == 403, path
    assert still_held(world) == ["00aa"]


async def test_the_held_post_is_shown_as_text_and_its_html_only_in_a_strict_frame(
        world: World) -> None:
    world.held("00aa", "team@example.test")
    page = await world.clients["moderator"].get("/ui/moderation/00aa")
    assert page.status_code == 200
    assert "<script>alert(1)" not in page.text
    assert "Win &lt;script&gt;alert(1)&lt;/script&gt;" in page.text  # the decoded subject
    assert "plain &lt;b&gt;text&lt;/b&gt;" in page.text
    assert "evil.test" not in page.text and "steal()" not in page.text
    [frame_tag] = re.findall(r"<iframe[^>]*>", page.text)
    assert 'sandbox=""' in frame_tag and 'src="/ui/moderation/00aa/frame"' in frame_tag
    frame = await world.clients["moderator"].get("/ui/moderation/00aa/frame")
    assert frame.status_code == 200
    csp = frame.headers["content-security-policy"]
    assert csp.startswith("default-src 'none'; img-src data:; style-src 'unsafe-inline'")
    assert "sandbox" in csp and "frame-ancestors 'self'" in csp
    assert frame.headers["x-frame-options"] == "SAMEORIGIN"
    assert "<p>Hi<img></p>" in frame.text
    assert "script" not in frame.text and "evil.test" not in frame.text
    # The pages themselves may not be framed at all.
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


async def test_approve_and_add_member_delivers_and_is_audited(world: World) -> None:
    world.held("00aa", "team@example.test")
    approved = await world.post("moderator", "/ui/moderation/00aa/approve",
                                {"add_member": "on"})
    assert approved.status_code == 303 and approved.headers["location"] == "/ui/moderation"
    assert still_held(world) == []
    roster = {m.address: m.role.value for m in world.harness.directory.members(
        "team@example.test")}
    assert roster["eve@outside.test"] == "member"  # the owner and moderator are staff
    repo = world.harness.deps.runner.repo
    expand_received(repo, 2000.0, 100)
    assert [d.recipient for d in repo.list_deliveries(10)] == ["eve@outside.test"]
    assert ("mod@example.test", "held.approve", "team@example.test") in world.audit()


async def test_reject_mails_the_reason_and_a_bad_reason_is_a_field_error(
        world: World) -> None:
    world.held("00aa", "team@example.test")
    bad = await world.post("owner", "/ui/moderation/00aa/reject", {"reason": "no\x07bell"})
    assert bad.status_code == 422 and "control character" in bad.text
    assert still_held(world) == ["00aa"]
    rejected = await world.post("owner", "/ui/moderation/00aa/reject",
                                {"reason": "Members only, sorry."})
    assert rejected.status_code == 303 and still_held(world) == []
    [notice] = world.harness.deps.runner.repo.list_deliveries(10)
    assert notice.recipient == "eve@outside.test"
    assert ("ann@example.test", "held.reject", "team@example.test") in world.audit()


# -- rules --------------------------------------------------------------------------------

async def test_filter_rules_are_validated_as_the_cli_does_and_only_owners_change_them(
        world: World) -> None:
    path = "/ui/rules/team@example.test/filters"
    bad = await world.post("owner", path, {"filter_condition": "header",
                                           "filter_header": "Subject", "filter_value": "(",
                                           "filter_action": "hold"})
    assert bad.status_code == 422 and "regular expression" in bad.text
    added = await world.post("owner", path, {
        "filter_condition": "header", "filter_header": "Subject", "filter_value": "viagra",
        "filter_action": "reject", "filter_text": "No spam"})
    assert added.status_code == 303
    [rule] = world.harness.directory.filter_rules("team@example.test")
    assert (rule.header, rule.argument, rule.action.value) == ("subject", "viagra", "reject")
    moderator = await world.post("moderator", path, {"filter_condition": "body",
                                                     "filter_value": "x",
                                                     "filter_action": "hold"})
    assert moderator.status_code == 403
    stranger = await world.post("other_owner", path + "/1/remove")
    assert stranger.status_code == 404
    page = await world.clients["moderator"].get("/ui/rules/team@example.test")
    assert "header subject matches viagra" in page.text and "Add rule" not in page.text
    removed = await world.post("owner", path + "/1/remove")
    assert removed.status_code == 303
    assert world.harness.directory.filter_rules("team@example.test") == []
    actions = [a[1] for a in world.audit()]
    assert "filter.add" in actions and "filter.remove" in actions


async def test_block_entries_and_the_autoreply_from_their_forms(world: World) -> None:
    base = "/ui/rules/team@example.test"
    assert (await world.post("owner", base + "/senders", {
        "sender_action": "block", "sender_pattern": "*@spam.test"})).status_code == 303
    assert [r.pattern for r in world.harness.directory.sender_rules(
        None, "team@example.test")] == ["*@spam.test"]
    assert (await world.post("owner", base + "/autoreply", {
        "reply_subject": "Away", "reply_body": "Back in January", "reply_days": "3",
        "reply_ends": "2999-01-02"})).status_code == 303
    reply = world.harness.directory.get_autoreply("team@example.test")
    assert reply is not None and reply.once_per_days == 3 and reply.ends_at
    bad = await world.post("owner", base + "/autoreply", {"reply_body": "x",
                                                          "reply_days": "0"})
    assert bad.status_code == 422
    assert (await world.post("owner", base + "/autoreply/clear")).status_code == 303
    assert world.harness.directory.get_autoreply("team@example.test") is None
    assert (await world.post("owner", base + "/senders/remove", {
        "action": "block", "pattern": "*@spam.test"})).status_code == 303
    assert world.harness.directory.sender_rules(None, "team@example.test") == []


# -- trace and queue ----------------------------------------------------------------------

def _delivered_post(world: World, message_id: str, rcpt: str) -> None:
    """A post to ``rcpt``, expanded into deliveries to its members."""
    raw = b"Message-ID: <p-" + message_id.encode() + b"@x.test>\r\nSubject: x\r\n\r\nhi\r\n"
    digest = content_hash(raw)
    message = InboundMessage(message_id, "poster@outside.test", (rcpt,), digest, len(raw),
                             1000.0, "192.0.2.9", "client.test", "ESMTP",
                             header_id=f"<p-{message_id}@x.test>")
    repo = world.harness.deps.runner.repo
    store_batch(repo, IngestBatch([message], bodies={digest: raw}, contents={digest: raw}),
                1000.0, lambda: None)
    expand_received(repo, 1000.0, 100)


@pytest.fixture
def posts(world: World) -> Iterator[None]:
    repo = world.harness.deps.runner.repo
    repo.add_members("team@example.test", ["t1@x.test", "t2@x.test"], 0.0)
    repo.add_members("other@example.test", ["o1@y.test"], 0.0)
    _delivered_post(world, "00c1", "team@example.test")
    _delivered_post(world, "00c2", "other@example.test")
    yield


async def test_the_trace_shows_a_list_owner_only_their_list_messages(
        world: World, posts: None) -> None:
    mine = await world.clients["owner"].get("/ui/trace", params={"q": "poster@outside.test"})
    assert mine.status_code == 200
    assert "00c1" in mine.text and "00c2" not in mine.text and "o1@y.test" not in mine.text
    everything = await world.clients["admin"].get("/ui/trace",
                                                  params={"q": "poster@outside.test"})
    assert "00c1" in everything.text and "00c2" in everything.text
    bad = await world.clients["admin"].get("/ui/trace", params={"q": "x", "since": "soon"})
    assert bad.status_code == 422 and "invalid" in bad.text


async def test_queue_actions_are_narrowed_to_the_owner_list_and_deletes_confirmed(
        world: World, posts: None) -> None:
    page = await world.clients["owner"].get("/ui/queue")
    assert "t1@x.test" in page.text and "o1@y.test" not in page.text
    refused = await world.clients["owner"].get("/ui/queue",
                                               params={"list": "other@example.test"})
    assert refused.status_code == 404
    viewed = await world.clients["moderator"].get("/ui/queue")
    assert viewed.status_code == 200 and 'name="ids"' not in viewed.text
    assert (await world.post("moderator", "/ui/queue/act", {
        "action": "hold", "scope": "filter"})).status_code == 403
    repo = world.harness.deps.runner.repo
    theirs = next(d.id for d in repo.list_deliveries(10) if d.recipient == "o1@y.test")
    untouched = await world.post("owner", "/ui/queue/act", {"action": "hold",
                                                            "ids": str(theirs)})
    assert untouched.status_code == 303  # the selection is narrowed to the owner's list
    assert {d.status for d in repo.list_deliveries(10)} == {"queued"}
    asked = await world.post("owner", "/ui/queue/act", {"action": "delete",
                                                        "scope": "filter"})
    assert asked.status_code == 200 and "Delete 2 deliveries" in asked.text
    assert {d.status for d in repo.list_deliveries(10)} == {"queued"}
    done = await world.post("owner", "/ui/queue/act", {"action": "delete", "scope": "filter",
                                                       "confirm": "yes"})
    assert done.status_code == 303
    statuses = {d.recipient: d.status for d in repo.list_deliveries(10)}
    assert statuses == {"t1@x.test": "deleted", "t2@x.test": "deleted",
                        "o1@y.test": "queued"}
    assert ("ann@example.test", "queue.delete", "team@example.test") in world.audit()
