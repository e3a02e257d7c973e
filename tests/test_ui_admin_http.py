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
