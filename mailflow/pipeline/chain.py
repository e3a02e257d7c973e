"""The three chains: one step signature each, their ordered registries, their runners.

As in Mailman 3's pipelines (an ordered tuple of handlers) or procrastinate's
middlewares, a new rule is one step module plus one line in a registry below; neither
the protocol adapters nor the store change.

* **accept** (before the 250/202): each step sees the recipients nothing has decided
  yet and returns a decision for those it decides (accept, reject, hold, discard); the
  rest go on to the next step and are accepted at the end.  Steps are coroutines, as
  some wait on the store (the sender blocklist) or the network (SPF, to come).
* **process** (after the durable commit, possibly inside the ingest transaction): each
  step adds deliveries and events to the context; synchronous, on the writer thread.
* **send** (per outgoing copy): each step adds header fields to the copy or names list
  fields it replaces.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Protocol

from mailflow import headers
from mailflow.model import AuthorField, FilterRule, InboundMessage, MailingList, Member
from mailflow.pipeline.accept.blocklist import SenderBlocklist
from mailflow.pipeline.accept.envelope import EnvelopeText
from mailflow.pipeline.accept.filters import FilterRules, MessageFilters
from mailflow.pipeline.accept.hops import HopLimit
from mailflow.pipeline.accept.loops import NotLooping
from mailflow.pipeline.accept.posting import PostingPolicyStep, Roster
from mailflow.pipeline.accept.recipients import Lookup, RecipientCheck
from mailflow.pipeline.accept.size import SizeLimit
from mailflow.pipeline.accept.well_formed import Framed, WellFormed
from mailflow.pipeline.context import (
    ACCEPT,
    CopyContext,
    Decision,
    Directory,
    Identity,
    MessageContext,
    ProcessContext,
    Recipient,
    SenderRules,
)
from mailflow.pipeline.process.autoreply import autoreply
from mailflow.pipeline.process.bounces import bounces
from mailflow.pipeline.process.expand import expand
from mailflow.pipeline.send.decorate import decorate
from mailflow.pipeline.send.dmarc import dmarc_from
from mailflow.pipeline.send.filter_actions import filter_tag
from mailflow.pipeline.send.forward import forward_style
from mailflow.pipeline.send.list_headers import list_headers
from mailflow.pipeline.send.strip import filter_strip
from mailflow.pipeline.send.tag import plus_tag
from mailflow.pipeline.send.trace import trace_fields


class AcceptStep(Protocol):
    async def __call__(self, ctx: MessageContext, pending: Sequence[Recipient]
                       ) -> Mapping[str, Decision]: ...


ProcessStep = Callable[[ProcessContext], None]
SendStep = Callable[[CopyContext], None]


class AcceptSettings(Protocol):
    @property
    def instance_id(self) -> str: ...
    @property
    def max_message_size(self) -> int: ...
    @property
    def max_received_headers(self) -> int: ...
    @property
    def filter_regex_timeout(self) -> float: ...


# -- the registries ---------------------------------------------------------------------

def accept_chain(settings: AcceptSettings, lookup: Lookup, rules: SenderRules, *,
                 submitted: bool, filters: FilterRules | None = None,
                 roster: Roster | None = None) -> tuple[AcceptStep, ...]:
    """In order.

    ``submitted``: the chain for input without an SMTP conversation (HTTP, pipe), which
    also checks what an SMTP client passed before DATA (syntax trusted, RCPT asked) and
    the whole header section; SMTP/LMTP get the lighter :class:`Framed` check.
    ``filters``: the lists' filter rules (the relay always has them), last, as the
    only step that may parse the whole message: whatever the cheaper steps refuse is
    never parsed.  ``roster``: the lists' rosters, for their posting policies (after
    the blocklist: a blocked sender is refused as such, whatever its role).
    """
    return (
        SizeLimit(settings.max_message_size),
        EnvelopeText(),
        *((WellFormed(), RecipientCheck(lookup)) if submitted else (Framed(),)),
        HopLimit(settings.max_received_headers),
        NotLooping(settings.instance_id),
        SenderBlocklist(rules),
        *((PostingPolicyStep(lookup, roster),) if roster else ()),
        *((MessageFilters(filters, settings.filter_regex_timeout),) if filters else ()),
    )


# Next: forward, moderation.
PROCESS_CHAIN: tuple[ProcessStep, ...] = (expand, bounces, autoreply)


def process_chain(commands: ProcessStep | None = None) -> tuple[ProcessStep, ...]:
    """In order; ``commands``: the list commands step (``process/commands.py``), which
    the relay builds with its token secret and public URL."""
    if commands is None:
        return PROCESS_CHAIN
    return (expand, bounces, commands, autoreply)

# ``filter_strip`` first (a strip rule's attachments go before a fwd wraps the rest),
# then ``forward_style``: it may replace the whole message the others add fields to.
# ``decorate`` (subject prefix, Reply-To, header and footer) after ``list_headers``, whose
# fields it leaves alone; ``dmarc_from`` after it, so a Reply-To policy and the author's
# place in Reply-To are decided together.  DKIM signs the rendered copy after the chain
# (``pipeline/send/dkim.py``, called by the scheduler).
SEND_CHAIN: tuple[SendStep, ...] = (filter_strip, forward_style, trace_fields, list_headers,
                                    decorate, dmarc_from, plus_tag, filter_tag)


def rendering_variant(mailing_list: MailingList, recipient: str = "", *,
                      rules: Sequence[FilterRule] = ()) -> Hashable:
    """What tells two copies of one message apart under ``SEND_CHAIN``.

    The list (its headers, the plus tag it was reached by), its forward style, DMARC
    mode and decoration (a copy rendered before one of them changed must not be reused
    after); the list's filter rules when one of them changes copies
    (``send/filter_actions.copy_rules``: which applies depends on the message and those
    rules alone); a personalized list's copy is its member's own (footer, unsubscribe
    token, VERP sender), so the member is part of it.  Every cache of rendered copies
    keys on it.
    """
    shared: tuple[Hashable, ...] = (mailing_list.id, mailing_list.forward_style,
                                    mailing_list.dmarc, mailing_list.decoration)
    if rules:
        shared = (*shared, tuple((rule.id, rule.action, rule.text) for rule in rules))
    return (*shared, recipient) if mailing_list.personalize else shared


def copy_recipient(mailing_list: MailingList, recipients: Sequence[str]) -> str:
    """The member a copy is rendered for: the one recipient of a personalized list's
    transaction, else '' (a shared copy)."""
    return recipients[0] if mailing_list.personalize and len(recipients) == 1 else ""


# -- the runners ------------------------------------------------------------------------

async def run_accept(steps: Sequence[AcceptStep], ctx: MessageContext, *,
                     all_or_nothing: bool = False) -> dict[str, Decision]:
    """A decision for every recipient, by canonical address, in envelope order.

    ``all_or_nothing`` (SMTP, HTTP, pipe: one refusal refuses the message) stops after
    the first step that rejects a recipient: its refusal is the one the sender gets,
    as when the checks raised in this order, and later steps are not asked in vain.
    """
    decisions: dict[str, Decision] = {}
    pending = list(ctx.recipients.values())
    for step in steps:
        if not pending:
            break
        decided = await step(ctx, pending)
        if decided:
            decisions.update(decided)
            if all_or_nothing and any(d.error is not None for d in decided.values()):
                break
            pending = [r for r in pending if r.canonical not in decided]
    if not decisions:
        return dict.fromkeys(ctx.recipients, ACCEPT)
    return {c: decisions.get(c, ACCEPT) for c in ctx.recipients}


def run_process(steps: Sequence[ProcessStep], message: InboundMessage,
                directory: Directory, now: float = 0.0,
                content: Callable[[], bytes] | None = None) -> ProcessContext:
    ctx = (ProcessContext(message, directory, now) if content is None
           else ProcessContext(message, directory, now, content))
    for step in steps:
        step(ctx)
    return ctx


def render_copy(raw: bytes, message: InboundMessage, mailing_list: MailingList,
                identity: Identity, steps: Sequence[SendStep] = SEND_CHAIN, *,
                member: Member | None = None,
                rewrite_from: AuthorField | None = None,
                filter_rule: FilterRule | None = None) -> bytes:
    """The outgoing copy: the steps' fields, then the original header and body bytes.

    Added fields use the message's own line ending.  ``member``: the one member this
    copy is rendered for (a personalized list's: its footer, one-click unsubscribe link
    and VERP sender name them, see :func:`copy_recipient`), or None for a copy shared by
    every recipient.  ``rewrite_from``: the list's address replaces the author's in
    From: (DMARC), the author goes in that field.  ``filter_rule``: the list's tag or
    strip rule that applies to this message (``send/filter_actions.applied_rule``).
    """
    cut = headers.header_length(raw)
    # The body as a view: copied once, into the copy (a fwd step makes bytes of it).
    copy = CopyContext(message, mailing_list, identity, raw[:cut], memoryview(raw)[cut:],
                       member=member, rewrite_from=rewrite_from, filter_rule=filter_rule)
    for step in steps:
        step(copy)
    header, rest = copy.header, copy.body
    newline = b"\r\n" if header.endswith(b"\r\n") or not header else b"\n"
    if copy.removed:
        header = headers.without_fields(header, copy.removed)
    if not copy.added:
        return b"".join((header, rest))
    added = "\n".join(copy.added).replace("\n", newline.decode()).encode("utf-8") + newline
    return b"".join((added, header, rest))
