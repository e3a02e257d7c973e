"""The processing chain: expansion and the batch planning around it, with no database."""

from __future__ import annotations

from mailflow import addresses
from mailflow.model import (
    Event,
    InboundMessage,
    ListKind,
    MailingList,
    NewDelivery,
    Resolution,
    role_alias,
)
from mailflow.pipeline.chain import PROCESS_CHAIN, run_process
from mailflow.pipeline.context import ProcessContext
from mailflow.pipeline.process.expand import expand
from mailflow.services.processor import plan_batch

TEAM = MailingList(1, "team@example.test", ListKind.LIST, "Team", 5, 0.0)
ALIAS = MailingList(2, "info@example.test", ListKind.ALIAS, "", 0, 0.0)


class Directory:
    """The directory as a dict, counting look-ups."""

    def __init__(self, members: dict[int, list[str]]) -> None:
        self.members = members
        self.resolved: list[str] = []

    def resolve(self, address: str) -> Resolution:
        self.resolved.append(address)
        for target in (TEAM, ALIAS):
            if address == target.address:
                return Resolution("list", target)
            if address == target.bounces_address:
                return Resolution("bounces", target)
        return Resolution("unknown_address")

    def active_member_addresses(self, list_id: int) -> list[str]:
        return self.members[list_id]

    def autoreply(self, mailing_list: MailingList) -> None:
        return None

    def last_reply(self, list_id: int, sender: str) -> float | None:
        return None

    def note_reply(self, list_id: int, sender: str, now: float) -> None:
        pass


def message(*rcpts: str, id_: str = "m1") -> InboundMessage:
    return InboundMessage(id_, "p@outside.test", rcpts, "h", 10, 0.0, "", "", "ESMTP")


def test_one_copy_per_member_and_list_with_a_trace() -> None:
    directory = Directory({1: ["a@x.test", "b@x.test"], 2: ["a@x.test"]})
    ctx = run_process([expand], message("Team@example.test", "team@example.test",
                                        "info@example.test"), directory)
    assert ctx.deliveries == [NewDelivery("m1", 1, "a@x.test", 5),
                              NewDelivery("m1", 1, "b@x.test", 5),
                              NewDelivery("m1", 2, "a@x.test", 0)]
    assert ctx.events == [Event("expanded", "list team@example.test: 2 recipient(s)", "m1"),
                          Event("expanded", "alias info@example.test: 1 recipient(s)", "m1")]
    assert directory.resolved == ["team@example.test", "info@example.test"]


def test_a_list_reached_by_two_addresses_is_expanded_once() -> None:
    """``postmaster`` and ``postmaster@<domain>`` are one role alias: one copy."""
    postmaster = role_alias("postmaster")

    class Roles(Directory):
        def resolve(self, address: str) -> Resolution:
            if addresses.split(address)[0] == "postmaster":
                return Resolution("list", postmaster)
            return super().resolve(address)

    directory = Roles({postmaster.id: ["ops@x.test"], 1: ["a@x.test"]})
    ctx = run_process(PROCESS_CHAIN, message("postmaster", "Postmaster@example.test",
                                             "team@example.test"), directory)
    assert ctx.deliveries == [NewDelivery("m1", postmaster.id, "ops@x.test", 0),
                              NewDelivery("m1", 1, "a@x.test", 5)]


def test_an_alias_reached_by_several_plus_tags_is_expanded_once() -> None:
    class Tagged(Directory):
        def resolve(self, address: str) -> Resolution:
            return super().resolve(address.replace("+a@", "@").replace("+b@", "@"))

    ctx = run_process([expand], message("info+a@example.test", "info+b@example.test",
                                        "info@example.test"), Tagged({2: ["a@x.test"]}))
    assert ctx.deliveries == [NewDelivery("m1", 2, "a@x.test", 0)]


def test_bounces_are_left_to_the_bounces_step_and_vanished_lists_dropped() -> None:
    ctx = run_process([expand], message("team-bounces@example.test", "gone@example.test", ""),
                      Directory({1: ["a@x.test"]}))
    assert ctx.deliveries == []
    assert [(e.kind, e.detail) for e in ctx.events] == [
        ("dropped", "gone@example.test: no longer a list or alias here")]


def test_steps_run_in_order_on_one_context() -> None:
    def moderated(ctx: ProcessContext) -> None:  # a later step sees the earlier's output
        ctx.event("counted", str(len(ctx.deliveries)))

    ctx = run_process([expand, moderated], message("team@example.test"),
                      Directory({1: ["a@x.test", "b@x.test"]}))
    assert ctx.events[-1] == Event("counted", "2", "m1")


def test_inline_planning_skips_what_does_not_fit() -> None:
    directory = Directory({1: [f"m{i}@x.test" for i in range(10)], 2: ["a@x.test"]})
    batch = [message("team@example.test", id_="big"), message("info@example.test", id_="small"),
             message("gone@example.test", id_="empty")]
    plan = plan_batch(PROCESS_CHAIN, directory, batch, 5, inline=True)
    assert [m.id for m in plan.queued] == ["small"]
    assert [m.id for m in plan.done] == ["empty"]
    assert plan.taken == 2 and len(plan.deliveries) == 1
    assert plan.statuses() == {"small": "queued", "empty": "done"}


def test_processor_planning_takes_the_first_message_whatever_its_size() -> None:
    directory = Directory({1: [f"m{i}@x.test" for i in range(10)], 2: ["a@x.test"]})
    batch = [message("team@example.test", id_="big"), message("info@example.test", id_="next")]
    plan = plan_batch(PROCESS_CHAIN, directory, batch, 5, inline=False)
    assert [m.id for m in plan.queued] == ["big"] and len(plan.deliveries) == 10
    plan = plan_batch(PROCESS_CHAIN, directory, batch[::-1], 5, inline=False)
    assert [m.id for m in plan.queued] == ["next"]  # the batch ends at the first misfit
