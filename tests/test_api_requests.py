"""``/api/v1/subscription-requests``: requests to join ``approve`` lists, seen and decided
by the lists' owners and moderators (the ``world`` of test_api.py)."""

from __future__ import annotations

from mailflow.model import InboundMessage
from mailflow.services.moderation import ModerationSweep
from mailflow.testing.clock import FakeClock
from tests import test_api
from tests.test_api import World, problem_of

world = test_api.world  # the fixture: admins, owners and moderators of two lists


async def test_owners_see_and_approve_their_lists_requests(world: World) -> None:
    team = world.harness.ask_to_join("team@example.test", "new@x.test")
    other = world.harness.ask_to_join("other@example.test", "else@x.test")
    listed = await world.call("GET", "/subscription-requests", world.other_owner)
    assert [(r["id"], r["list"], r["address"]) for r in listed.json()["items"]] == [
        (other, "other@example.test", "else@x.test")]
    everything = await world.call("GET", "/subscription-requests", world.admin_read)
    assert {r["id"] for r in everything.json()["items"]} == {team, other}
    only = await world.call("GET", "/subscription-requests?list=team@example.test",
                            world.moderator)
    assert [r["id"] for r in only.json()["items"]] == [team]
    problem_of(await world.call("GET", "/subscription-requests?list=team@example.test",
                                world.other_owner), 404)

    problem_of(await world.call("POST", f"/subscription-requests/{team}/approve",
                                world.other_owner), 404)
    problem_of(await world.call("POST", f"/subscription-requests/{team}/approve",
                                world.admin_read), 403)
    done = await world.call("POST", f"/subscription-requests/{team}/approve", world.owner)
    assert done.status_code == 200, done.text
    assert done.json() == {"id": team, "list": "team@example.test", "address": "new@x.test",
                           "status": "approved"}
    team_list = world.harness.directory.get_list("team@example.test")
    with world.harness.deps.runner.repo.ingest_transaction() as tx:
        assert tx.directory.is_member(team_list.id, "new@x.test")
    problem_of(await world.call("POST", f"/subscription-requests/{team}/approve",
                                world.owner), 404)


async def test_a_rejection_tells_the_reason_and_is_audited(world: World) -> None:
    other = world.harness.ask_to_join("other@example.test", "else@x.test")
    problem_of(await world.call("POST", f"/subscription-requests/{other}/reject",
                                world.other_owner, json={"reason": "x" * 10_000}), 422)
    done = await world.call("POST", f"/subscription-requests/{other}/reject",
                            world.other_owner, json={"reason": "staff only"})
    assert done.status_code == 200 and done.json()["status"] == "rejected"
    assert world.harness.deps.runner.repo.subscription_requests() == []
    entries = (await world.call("GET", "/audit", world.admin)).json()["items"]
    assert any(e["action"] == "request.reject" and "staff only" in e["detail"]
               for e in entries)


async def test_an_expired_request_is_as_unknown_as_one_never_made(world: World) -> None:
    def no_content(message: InboundMessage) -> bytes:
        raise AssertionError(message.id)

    team = world.harness.ask_to_join("team@example.test", "late@x.test")  # at 1000.0
    sweep = ModerationSweep(world.harness.deps.runner, FakeClock(1000.0 + 14 * 86_400),
                            no_content, interval=1.0)
    assert await sweep.sweep() == (0, 0, 1)  # the default 14 days
    unknown = problem_of(await world.call("POST", "/subscription-requests/999999/approve",
                                          world.owner), 404)
    assert unknown["detail"] == "no request 999999 waiting"
    for action in ("approve", "reject"):
        gone = problem_of(await world.call("POST", f"/subscription-requests/{team}/{action}",
                                           world.owner), 404)
        assert {**gone, "detail": None} == {**unknown, "detail": None}
        assert gone["detail"] == f"no request {team} waiting"
    listed = await world.call("GET", "/subscription-requests", world.owner)
    assert listed.json()["items"] == []
