"""The accept chain's steps and the accept service's handling of their decisions.

No process, no database: recipients resolve from a dict, the committer records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from mailflow.errors import (
    InvalidRecipientAddress,
    LoopDetected,
    MalformedMessage,
    MessageTooLarge,
    NoRecipients,
    StorageUnavailable,
    UnknownDomain,
    UnknownRecipient,
)
from mailflow.model import (
    Envelope,
    Event,
    InboundMessage,
    ListKind,
    MailingList,
    MessageStatus,
    Resolution,
)
from mailflow.pipeline.accept.blocklist import SenderBlocklist
from mailflow.pipeline.accept.envelope import EnvelopeText
from mailflow.pipeline.accept.filters import MessageFilters
from mailflow.pipeline.accept.hops import HopLimit
from mailflow.pipeline.accept.loops import NotLooping
from mailflow.pipeline.accept.recipients import RecipientCheck
from mailflow.pipeline.accept.size import SizeLimit
from mailflow.pipeline.accept.well_formed import Framed, WellFormed
from mailflow.pipeline.chain import AcceptStep, accept_chain, run_accept
from mailflow.pipeline.context import ACCEPT, Action, Decision, MessageContext, Recipient
from mailflow.services.accept import AcceptPolicy, AcceptService
from mailflow.services.filter_rules import no_filters
from mailflow.services.sender_rules import no_rules
from mailflow.testing.clock import FakeClock

RAW = b"From: a@outside.test\r\nSubject: hi\r\n\r\nbody\r\n"
TEAM = MailingList(1, "team@example.test", ListKind.LIST, "Team", 0, 0.0)
OTHER = MailingList(2, "other@example.test", ListKind.ALIAS, "", 0, 0.0)
DIRECTORY = {
    "team@example.test": Resolution("list", TEAM),
    "other@example.test": Resolution("list", OTHER),
    "nobody@example.test": Resolution("unknown_address"),
    "x@elsewhere.test": Resolution("unknown_domain"),
    "x@a\u200db.example": Resolution("unknown_domain"),
    "x@xn--ncode-cta3g.example": Resolution("unknown_domain"),
}
POLICY = AcceptPolicy("abc", max_message_size=1000, max_received_headers=3)
RULES = no_rules(FakeClock())  # sender entries: tests/test_blocklist.py


async def lookup(canonical: str) -> Resolution:
    return DIRECTORY[canonical]


def context(*rcpts: str, raw: bytes = RAW, submitted: bool = False) -> MessageContext:
    return MessageContext.of(Envelope("a@outside.test", rcpts), raw, submitted=submitted)


def marked(*lists: str) -> bytes:
    return b"".join(f"X-MailFlow-Loop: abc; {a}\r\n".encode() for a in lists) + RAW


async def decide(step: AcceptStep, ctx: MessageContext) -> Mapping[str, Decision]:
    return await step(ctx, list(ctx.recipients.values()))


# -- the context ------------------------------------------------------------------------

def test_context_splits_once_and_keys_recipients_canonically() -> None:
    ctx = MessageContext.of(Envelope("a@o.test", ("<Team@Example.test>", "team@example.test")),
                            RAW, known={"team@example.test": DIRECTORY["team@example.test"]})
    assert ctx.header == b"From: a@outside.test\r\nSubject: hi\r\n"
    assert list(ctx.recipients) == ["team@example.test"]
    rcpt = ctx.recipients["team@example.test"]
    assert (rcpt.address, rcpt.resolution) == ("<Team@Example.test>", DIRECTORY[rcpt.canonical])


# -- each step --------------------------------------------------------------------------

async def test_envelope_addresses_that_are_not_text_are_refused() -> None:
    """Invalid UTF-8 (lone surrogates once decoded) cannot be stored: refused, not 451."""
    assert await decide(EnvelopeText(), context("team@example.test")) == {}
    ctx = MessageContext.of(Envelope("\udcff@outside.test", ("team@example.test",)), RAW)
    decided = await decide(EnvelopeText(), ctx)
    assert isinstance(decided["team@example.test"].error, MalformedMessage)
    ctx = context("team@example.test", "\udcff@example.test")
    decided = await decide(EnvelopeText(), ctx)
    assert list(decided) == ["\udcff@example.test"]


async def test_size_limit_refuses_every_recipient() -> None:
    assert await decide(SizeLimit(len(RAW)), context("team@example.test")) == {}
    decided = await decide(SizeLimit(len(RAW) - 1), context("team@example.test",
                                                             "other@example.test"))
    assert {d.action for d in decided.values()} == {Action.REJECT}
    assert isinstance(decided["other@example.test"].error, MessageTooLarge)


@pytest.mark.parametrize(("raw", "reason"), [
    (b"  \r\n", "empty message"),
    (b"not a header\r\n\r\nbody", "does not start with a header field"),
    (b"Subject: x\r\nbroken line\r\n\r\n", "header line 2"),
    (b"Subject: x\0\r\n\r\n", "NUL byte"),
])
async def test_well_formed(raw: bytes, reason: str) -> None:
    decided = await decide(WellFormed(), context("team@example.test", raw=raw,
                                                 submitted=True))
    error = decided["team@example.test"].error
    assert isinstance(error, MalformedMessage) and reason in error.reason
    assert await decide(WellFormed(), context("team@example.test", submitted=True)) == {}


async def test_recipient_check_refuses_strangers_and_fills_the_context() -> None:
    step = RecipientCheck(lookup)
    ctx = context("team@example.test", "Nobody@example.test", "x@elsewhere.test",
                  submitted=True)
    decided = await decide(step, ctx)
    assert set(decided) == {"nobody@example.test", "x@elsewhere.test"}
    assert isinstance(decided["nobody@example.test"].error, UnknownRecipient)
    assert "<Nobody@example.test>" in str(decided["nobody@example.test"].error)
    assert isinstance(decided["x@elsewhere.test"].error, UnknownDomain)
    assert ctx.recipients["team@example.test"].resolution == DIRECTORY["team@example.test"]


async def test_an_invalid_idn_domain_is_refused_as_a_bad_address_not_as_relaying() -> None:
    """No relay can serve it: 501 5.1.3 with the reason (the sender fixes the address),
    on every ingress, as the accept service asks the same question at RCPT."""
    ctx = context("x@a\u200db.example", "x@ünïcode.example", submitted=True)
    decided = await decide(RecipientCheck(lookup), ctx)
    error = decided["x@a\u200db.example"].error
    assert isinstance(error, InvalidRecipientAddress) and error.smtp_reply().startswith(
        "501 5.1.3 <x@a\u200db.example>: the domain 'a\\u200db.example' is not a valid "
        "internationalised domain name (Joiner U+200D not allowed")
    # a valid IDN of no served domain is relaying, as any other domain
    assert isinstance(decided["x@xn--ncode-cta3g.example"].error, UnknownDomain)
    accept = AcceptService(lookup, RecordingCommitter(), FakeClock(), POLICY)
    with pytest.raises(InvalidRecipientAddress):
        await accept.check_recipient("x@a\u200db.example")


async def test_hop_limit_counts_received_fields() -> None:
    three = b"Received: hop\r\n" * 3 + RAW
    assert await decide(HopLimit(3), context("team@example.test", raw=three)) == {}
    decided = await decide(HopLimit(2), context("team@example.test", raw=three))
    assert isinstance(decided["team@example.test"].error, LoopDetected)


async def test_loops_are_refused_per_recipient() -> None:
    step = NotLooping("abc")
    assert await decide(step, context("team@example.test")) == {}
    decided = await decide(step, context("team@example.test", "other@example.test",
                                         raw=marked("team@example.test")))
    assert list(decided) == ["team@example.test"]
    assert isinstance(decided["team@example.test"].error, LoopDetected)
    assert await decide(NotLooping("another"), context(
        "team@example.test", raw=marked("team@example.test"))) == {}


async def test_a_copy_of_a_role_alias_coming_back_to_any_role_address_is_a_loop() -> None:
    """The postmaster alias is one for every domain (its marker names the bare role), so
    a postmaster_address that leads back here is refused at once, not after 30 hops."""
    decided = await decide(NotLooping("abc"), context(
        "Postmaster@example.test", "postmaster", "abuse@example.test", "team@example.test",
        raw=marked("postmaster")))
    assert list(decided) == ["postmaster@example.test", "postmaster"]
    assert all(isinstance(d.error, LoopDetected) for d in decided.values())


# -- the chain --------------------------------------------------------------------------

class Decides:
    """A step deciding some recipients, remembering whom it was asked about."""

    def __init__(self, decisions: dict[str, Decision]) -> None:
        self.decisions = decisions
        self.asked: list[list[str]] = []

    async def __call__(self, ctx: MessageContext, pending: Sequence[Recipient]
                       ) -> Mapping[str, Decision]:
        self.asked.append([r.canonical for r in pending])
        return {r.canonical: self.decisions[r.canonical] for r in pending
                if r.canonical in self.decisions}


async def test_a_step_sees_only_undecided_recipients_and_the_rest_are_accepted() -> None:
    held = Decision.hold("moderated")
    first = Decides({"b@example.test": held})
    second = Decides({"c@example.test": Decision.discard("filtered")})
    never = Decides({})
    ctx = context("c@example.test", "a@example.test", "b@example.test")
    decisions = await run_accept([first, second, never], ctx)
    assert list(decisions) == ["c@example.test", "a@example.test", "b@example.test"]
    assert decisions["a@example.test"] == ACCEPT
    assert decisions["b@example.test"] == held
    assert decisions["c@example.test"].action is Action.DISCARD
    assert first.asked == [["c@example.test", "a@example.test", "b@example.test"]]
    assert second.asked == [["c@example.test", "a@example.test"]]
    assert never.asked == [["a@example.test"]]
    done = Decides({"a@example.test": Decision.discard("x")})
    assert (await run_accept([done, never], context("a@example.test"))
            )["a@example.test"].action is Action.DISCARD
    assert never.asked == [["a@example.test"]]  # not asked once nobody is left


async def test_the_registry_keeps_today_s_order() -> None:
    steps = accept_chain(POLICY, lookup, RULES, submitted=True)
    assert [type(s) for s in steps] == [SizeLimit, EnvelopeText, WellFormed, RecipientCheck,
                                        HopLimit, NotLooping, SenderBlocklist]
    # An SMTP client passed RCPT before DATA; its header section is only checked to
    # be one (Framed), not line by line.
    steps = accept_chain(POLICY, lookup, RULES, submitted=False)
    assert [type(s) for s in steps] == [SizeLimit, EnvelopeText, Framed, HopLimit, NotLooping,
                                        SenderBlocklist]
    # The relay's service passes its filter rules: the one step that may parse it all.
    steps = accept_chain(POLICY, lookup, RULES, submitted=False, filters=no_filters(FakeClock()))
    assert type(steps[-1]) is MessageFilters


# -- the accept service -----------------------------------------------------------------

class RecordingCommitter:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.stored: list[tuple[InboundMessage, bytes, list[Event]]] = []

    async def commit(self, message: InboundMessage, data: bytes,
                     events: Sequence[Event] = ()) -> None:
        if self.fail:
            raise StorageUnavailable("disk full")
        self.stored.append((message, data, list(events)))


def service(*extra: AcceptStep, committer: RecordingCommitter | None = None
            ) -> tuple[AcceptService, RecordingCommitter]:
    committer = committer or RecordingCommitter()
    return AcceptService(lookup, committer, FakeClock(), POLICY,
                         (*accept_chain(POLICY, lookup, RULES, submitted=False), *extra),
                         (*accept_chain(POLICY, lookup, RULES, submitted=True), *extra)
                         ), committer


async def test_smtp_accept_is_all_or_nothing() -> None:
    accept, committer = service()
    with pytest.raises(LoopDetected):
        await accept.accept(Envelope("a@o.test", ("other@example.test", "team@example.test")),
                            marked("team@example.test"))
    assert committer.stored == []
    message_id = await accept.accept(Envelope("a@o.test", ("Team@example.test",)), RAW)
    [(message, data, events)] = committer.stored
    assert (message.id, message.rcpt_tos, data, events) == (
        message_id, ("team@example.test",), RAW, [])


async def test_lmtp_decides_per_recipient_and_stores_one_message() -> None:
    accept, committer = service()
    verdicts = await accept.accept_each(
        Envelope("a@o.test", ("team@example.test", "other@example.test")),
        marked("team@example.test"))
    [(message, _, _)] = committer.stored
    assert [(v.recipient, type(v.error), v.message_id) for v in verdicts] == [
        ("team@example.test", LoopDetected, None),
        ("other@example.test", type(None), message.id)]
    assert message.rcpt_tos == ("other@example.test",)
    verdicts = await accept.accept_each(Envelope("a@o.test", ("team@example.test",)),
                                        marked("team@example.test"))
    assert verdicts[0].message_id is None and len(committer.stored) == 1


async def test_submit_checks_in_the_order_of_an_smtp_conversation() -> None:
    accept, committer = service()
    envelope = Envelope("a@o.test", ("nobody@example.test",), protocol="HTTP")
    with pytest.raises(NoRecipients):
        await accept.submit(Envelope("a@o.test", ()), RAW)
    with pytest.raises(MessageTooLarge):
        await accept.submit(envelope, RAW + b"x" * 1000)
    with pytest.raises(MalformedMessage):
        await accept.submit(envelope, b"garbage\r\n\r\n")
    with pytest.raises(UnknownRecipient):
        await accept.submit(envelope, RAW)
    with pytest.raises(LoopDetected):
        await accept.submit(Envelope("a@o.test", ("team@example.test",)),
                            b"Received: x\r\n" * 4 + RAW)
    # The earliest check decides, whatever the recipients' order: the unknown recipient
    # (pipe exit 67), not the hop count the other one fails later (65).
    with pytest.raises(UnknownRecipient):
        await accept.submit(Envelope("a@o.test", ("team@example.test", "nobody@example.test")),
                            b"Received: x\r\n" * 4 + RAW)
    assert committer.stored == []
    await accept.submit(Envelope("a@o.test", ("team@example.test",)), b"From x\n" + RAW)
    assert committer.stored[0][1] == RAW  # the mbox From line is not part of the message


async def test_discard_is_answered_as_accepted_stored_without_the_recipient() -> None:
    accept, committer = service(Decides({"other@example.test": Decision.discard("filter 7")}))
    verdicts = await accept.accept_each(
        Envelope("a@o.test", ("team@example.test", "other@example.test")), RAW)
    [(message, _, events)] = committer.stored
    assert [(v.error, v.message_id) for v in verdicts] == [(None, message.id)] * 2
    assert message.rcpt_tos == ("team@example.test",)
    assert events == [Event("discarded", "other@example.test: filter 7", message.id)]


async def test_a_held_recipient_is_kept_as_a_held_message_with_its_event() -> None:
    accept, committer = service(Decides({"team@example.test": Decision.hold("moderated")}))
    message_id = await accept.accept(Envelope("a@o.test", ("team@example.test",)), RAW)
    [(message, _, events)] = committer.stored
    assert (message.id, message.rcpt_tos) == (message_id, ("team@example.test",))
    assert message.status is MessageStatus.HELD
    assert events == [Event("held", "team@example.test: moderated", message_id)]


async def test_held_and_taken_recipients_become_two_messages_of_one_blob() -> None:
    accept, committer = service(Decides({"team@example.test": Decision.hold("moderated")}))
    message_id = await accept.accept(
        Envelope("a@o.test", ("other@example.test", "team@example.test")), RAW)
    stored = {m.status: (m, events) for m, _, events in committer.stored}
    taken, taken_events = stored[MessageStatus.RECEIVED]
    held, held_events = stored[MessageStatus.HELD]
    assert (taken.id, taken.rcpt_tos, taken_events) == (message_id, ("other@example.test",), [])
    assert held.id != message_id and held.blob == taken.blob
    assert held.rcpt_tos == ("team@example.test",)
    assert held_events == [Event("held", "team@example.test: moderated", held.id)]


async def test_a_storage_failure_reaches_the_client() -> None:
    accept, _ = service(committer=RecordingCommitter(fail=True))
    with pytest.raises(StorageUnavailable):
        await accept.accept(Envelope("a@o.test", ("team@example.test",)), RAW)


async def test_check_recipient_refuses_and_remembers_only_ours() -> None:
    asked: list[str] = []

    async def counting(canonical: str) -> Resolution:
        asked.append(canonical)
        return DIRECTORY[canonical]

    accept = AcceptService(counting, RecordingCommitter(), FakeClock(), POLICY)
    assert (await accept.check_recipient("Team@Example.test")).mailing_list == TEAM
    await accept.check_recipient("team@example.test")
    with pytest.raises(UnknownDomain):
        await accept.check_recipient("x@elsewhere.test")
    assert asked == ["team@example.test", "x@elsewhere.test"]
    # An SMTP message's context takes what RCPT resolved from the recipient cache.
    seen: list[Resolution | None] = []

    async def look(ctx: MessageContext, pending: Sequence[Recipient]) -> Mapping[str, Decision]:
        seen.extend(r.resolution for r in pending)
        return {}

    accept.steps = (look,)
    await accept.accept(Envelope("a@o.test", ("team@example.test",)), RAW)
    assert seen == [DIRECTORY["team@example.test"]]


async def test_an_explicit_accept_is_stored_like_the_default() -> None:
    accept, committer = service()
    accept.steps = (Decides({"team@example.test": Decision(Action.ACCEPT, "allow-listed")}),
                    *accept.steps)
    await accept.accept(Envelope("a@o.test", ("team@example.test", "other@example.test")),
                        RAW)
    assert committer.stored[0][0].rcpt_tos == ("team@example.test", "other@example.test")
