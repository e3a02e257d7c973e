"""Requests to join on the moderation page over HTTP (no browser): an owner approves
their list's request, another owner's is not found (the ops pages' ``world``)."""

from __future__ import annotations

from tests import test_ui_ops_http
from tests.test_ui_ops_http import World

world = test_ui_ops_http.world  # the fixture: the ops pages' users, lists and sessions


async def test_an_owner_approves_a_request_and_not_another_owners(world: World) -> None:
    mine = world.harness.ask_to_join("team@example.test", "new@x.test")
    theirs = world.harness.ask_to_join("other@example.test", "else@x.test")
    page = await world.clients["owner"].get("/ui/moderation")
    assert page.status_code == 200 and "new@x.test" in page.text
    assert "else@x.test" not in page.text
    for action in ("approve", "reject"):
        refused = await world.post("owner", f"/ui/subscription-requests/{theirs}/{action}")
        assert refused.status_code == 404, action
    forged = await world.post("owner", f"/ui/subscription-requests/{mine}/approve",
                              csrf=False)
    assert forged.status_code == 403
    approved = await world.post("owner", f"/ui/subscription-requests/{mine}/approve")
    assert approved.status_code == 303 and approved.headers["location"] == "/ui/moderation"
    team = world.harness.directory.get_list("team@example.test")
    with world.harness.deps.runner.repo.ingest_transaction() as tx:
        assert tx.directory.is_member(team.id, "new@x.test")
    assert ("ann@example.test", "request.approve", "team@example.test") in world.audit()
    assert [r.id for r in world.harness.deps.runner.repo.subscription_requests()] == [theirs]
