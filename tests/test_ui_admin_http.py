"""The admin pages over HTTP (httpx's ASGI transport, a real store on SQLite and
PostgreSQL, no browser): site-wide and domain block/allow entries; who may change
them, the field errors of bad input, and the audit log."""

from __future__ import annotations

from tests import test_ui_ops_http
from tests.test_ui_ops_http import World

# The pages' world (users, lists, sessions) is test_ui_ops_http's fixture, shared.
world = test_ui_ops_http.world


async def test_an_admin_adds_and_removes_site_wide_and_domain_entries(world: World
                                                                      ) -> None:
    directory = world.harness.directory
    site = await world.post("admin", "/ui/rules/senders", {
        "sender_action": "block", "sender_pattern": "*@spam.test", "sender_domain": ""})
    assert site.status_code == 303 and site.headers["location"] == "/ui/rules"
    domain = await world.post("admin", "/ui/rules/senders", {
        "sender_action": "allow", "sender_pattern": "friend@spam.test",
        "sender_domain": "Example.TEST"})
    assert domain.status_code == 303
    assert {(r.action.value, r.pattern, r.target) for r in directory.sender_rules()} == {
        ("block", "*@spam.test", ""), ("allow", "friend@spam.test", "example.test")}
    page = await world.clients["admin"].get("/ui/rules")
    assert page.status_code == 200
    assert "*@spam.test" in page.text and "every recipient" in page.text
    assert "friend@spam.test" in page.text and "example.test" in page.text
    removed = await world.post("admin", "/ui/rules/senders/remove", {
        "action": "allow", "pattern": "friend@spam.test", "target": "example.test"})
    assert removed.status_code == 303
    assert [(r.pattern, r.target) for r in directory.sender_rules()] == [
        ("*@spam.test", "")]
    audited = world.audit()
    assert ("root@example.test", "sender_rule.block", "") in audited
    assert ("root@example.test", "sender_rule.allow", "example.test") in audited
    assert ("root@example.test", "sender_rule.remove_allow", "example.test") in audited


async def test_an_owner_neither_sees_nor_changes_wide_entries(world: World) -> None:
    world.harness.directory.add_sender_rule("block", "*@spam.test")
    page = await world.clients["owner"].get("/ui/rules")
    assert page.status_code == 200 and "*@spam.test" not in page.text
    assert 'action="/ui/rules/senders"' not in page.text
    added = await world.post("owner", "/ui/rules/senders", {
        "sender_action": "block", "sender_pattern": "*@x.test", "sender_domain": ""})
    assert added.status_code == 403
    removed = await world.post("owner", "/ui/rules/senders/remove", {
        "action": "block", "pattern": "*@spam.test", "target": ""})
    assert removed.status_code == 403
    assert [r.pattern for r in world.harness.directory.sender_rules()] == ["*@spam.test"]
    assert not [a for a in world.audit() if a[1].startswith("sender_rule.")]


async def test_bad_input_is_shown_at_its_field(world: World) -> None:
    bad_pattern = await world.post("admin", "/ui/rules/senders", {
        "sender_action": "block", "sender_pattern": "no\x07bell", "sender_domain": ""})
    assert bad_pattern.status_code == 422
    assert 'id="error-sender_pattern"' in bad_pattern.text
    bad_domain = await world.post("admin", "/ui/rules/senders", {
        "sender_action": "block", "sender_pattern": "*@x.test",
        "sender_domain": "not a domain"})
    assert bad_domain.status_code == 422
    assert 'id="error-sender_domain"' in bad_domain.text
    an_address = await world.post("admin", "/ui/rules/senders", {
        "sender_action": "block", "sender_pattern": "*@x.test",
        "sender_domain": "team@example.test"})
    assert an_address.status_code == 422 and "own rules page" in an_address.text
    bad_action = await world.post("admin", "/ui/rules/senders", {
        "sender_action": "drop", "sender_pattern": "*@x.test", "sender_domain": ""})
    assert bad_action.status_code == 422
    assert 'id="error-sender_action"' in bad_action.text and "block or allow" in bad_action.text
    assert world.harness.directory.sender_rules() == []


# -- suppressions -------------------------------------------------------------------------

async def test_an_admin_suppresses_for_every_list_and_removes_it(world: World) -> None:
    directory = world.harness.directory
    added = await world.post("admin", "/ui/suppressions", {
        "address": "Gone@Example.NET", "list": "", "reason": "mailbox closed"})
    assert added.status_code == 303 and added.headers["location"] == "/ui/suppressions"
    assert [(s.address, s.target, s.reason) for s in directory.suppressions()] == [
        ("gone@example.net", "", "mailbox closed")]
    directory.suppress("left@example.net", "other@example.test")
    page = await world.clients["admin"].get("/ui/suppressions")
    assert page.status_code == 200
    assert "gone@example.net" in page.text and "left@example.net" in page.text
    removed = await world.post("admin", "/ui/suppressions/remove", {
        "address": "gone@example.net", "list": ""})
    assert removed.status_code == 303
    assert [s.address for s in directory.suppressions()] == ["left@example.net"]
    audited = world.audit()
    assert ("root@example.test", "suppression.add", "*") in audited
    assert ("root@example.test", "suppression.remove", "*") in audited


async def test_an_owner_changes_only_their_list_suppressions(world: World) -> None:
    directory = world.harness.directory
    directory.suppress("global@example.net")
    directory.suppress("theirs@example.net", "other@example.test")
    page = await world.clients["owner"].get("/ui/suppressions")
    assert page.status_code == 200
    assert "global@example.net" not in page.text and "theirs@example.net" not in page.text
    assert (await world.clients["owner"].get(
        "/ui/suppressions", params={"list": "other@example.test"})).status_code == 404
    for path, data in (("/ui/suppressions", {"address": "x@example.net", "list": ""}),
                       ("/ui/suppressions/remove", {"address": "global@example.net",
                                                    "list": ""})):
        assert (await world.post("owner", path, data)).status_code == 403, path
    assert (await world.post("owner", "/ui/suppressions", {
        "address": "x@example.net", "list": "other@example.test"})).status_code == 404
    assert (await world.post("moderator", "/ui/suppressions", {
        "address": "x@example.net", "list": "team@example.test"})).status_code == 403
    mine = await world.post("owner", "/ui/suppressions", {
        "address": "x@example.net", "list": "team@example.test"})
    assert mine.status_code == 303
    assert mine.headers["location"] == "/ui/suppressions?list=team@example.test"
    assert [s.address for s in directory.suppressions("team@example.test")] == [
        "x@example.net"]
    assert "x@example.net" in (await world.clients["owner"].get("/ui/suppressions")).text
    assert ("ann@example.test", "suppression.add", "team@example.test") in world.audit()
    assert len(directory.suppressions()) == 3


async def test_a_bad_address_is_shown_at_its_field(world: World) -> None:
    bad = await world.post("admin", "/ui/suppressions", {"address": "not an address",
                                                         "list": ""})
    assert bad.status_code == 422 and 'id="error-address"' in bad.text
    assert world.harness.directory.suppressions() == []


# -- DKIM keys ----------------------------------------------------------------------------

async def test_an_admin_generates_a_key_sees_its_record_and_removes_it_after_asking(
        world: World) -> None:
    directory = world.harness.directory
    made = await world.post("admin", "/ui/dkim", {"domain": "example.test",
                                                  "selector": "s2026", "replace": "off"})
    assert made.status_code == 303 and made.headers["location"] == "/ui/dkim"
    [key] = directory.dkim_keys()
    assert key.selector == "s2026"
    page = await world.clients["admin"].get("/ui/dkim")
    assert page.status_code == 200
    assert "s2026._domainkey.example.test" in page.text and key.public_key in page.text
    body = "".join(key.private_key.splitlines()[1:-1])
    assert "PRIVATE KEY" not in page.text and body[:40] not in page.text
    again = await world.post("admin", "/ui/dkim", {"domain": "example.test",
                                                   "selector": "s2027"})
    assert again.status_code == 409 and 'id="error-domain"' in again.text
    asked = await world.post("admin", "/ui/dkim/remove", {"domain": "example.test"})
    assert asked.status_code == 200 and 'name="confirm" value="yes"' in asked.text
    assert len(directory.dkim_keys()) == 1
    removed = await world.post("admin", "/ui/dkim/remove", {"domain": "example.test",
                                                            "confirm": "yes"})
    assert removed.status_code == 303 and directory.dkim_keys() == []
    audited = world.audit()
    assert ("root@example.test", "dkim.create", "example.test") in audited
    assert ("root@example.test", "dkim.remove", "example.test") in audited


async def test_dkim_is_refused_to_an_owner_and_bad_input_is_a_field_error(
        world: World) -> None:
    assert (await world.clients["owner"].get("/ui/dkim")).status_code == 403
    refused = await world.post("owner", "/ui/dkim", {"domain": "example.test"})
    assert refused.status_code == 403
    world.harness.directory.create_dkim_key("example.test", "keep")
    assert (await world.post("owner", "/ui/dkim/remove", {
        "domain": "example.test", "confirm": "yes"})).status_code == 403
    bad = await world.post("admin", "/ui/dkim", {"domain": "example.test",
                                                 "selector": "no spaces!", "replace": "on"})
    assert bad.status_code == 422 and 'id="error-selector"' in bad.text
    assert [k.selector for k in world.harness.directory.dkim_keys()] == ["keep"]
    assert not [a for a in world.audit() if a[1].startswith("dkim.")]
