"""Block and allow entries for senders, at three scopes: every recipient, a domain, one address.

Which entry decides for a recipient: among the entries whose pattern matches the sender
and whose scope covers the recipient, those of the narrowest scope (address, then
domain, then global); among those, an allow entry beats a block entry.  So an allow
entry beats every block entry of the same or a wider scope, and a block entry for one
address still beats a global or domain allow entry: whoever set the narrower entry
meant that address in particular.

The accept service asks the same question at ``RCPT TO`` (SMTP, LMTP, the Postfix
policy service), where each recipient is refused on its own; this step decides for a
whole message: a sender blocked for every recipient is refused, a sender blocked for
some is accepted for the others and the blocked ones are discarded with an event (the
case of submissions, HTTP and pipe, which name all recipients at once; and of an SMTP
message whose entries changed between RCPT and DATA).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from mailflow import addresses, headers
from mailflow.errors import SenderBlocked
from mailflow.model import RuleAction, RuleScope, SenderRule
from mailflow.pipeline.context import Decision, MessageContext, Recipient, SenderRules


def judged_sender(mail_from: str) -> str:
    """The sender the entries are matched against, canonical; '' for one they never judge.

    The null sender (bounces) has no address to judge, and neither has a sender without
    ``@``: Postfix's pipe passes ``MAILER-DAEMON`` for the null sender, which ``*``
    would otherwise match.
    """
    sender = addresses.canonical(mail_from)
    return sender if "@" in sender else ""


def deciding_rule(rules: Iterable[SenderRule], recipient: str) -> SenderRule | None:
    """The entry that decides for ``recipient`` (canonical), None if none covers it.

    ``rules`` are entries whose pattern matches the sender, of any scope.  An entry for
    ``alias@d`` covers ``alias+tag@d`` too (it reaches the alias), as well as an entry
    for the tagged address itself.
    """
    domain = recipient.rpartition("@")[2]
    base = addresses.untagged(recipient)[0]
    best: SenderRule | None = None
    best_rank = (RuleScope.GLOBAL, False)
    for rule in rules:
        target = rule.target
        if not target:
            scope = RuleScope.GLOBAL
        elif target in (recipient, base):
            scope = RuleScope.ADDRESS
        elif target == domain:
            scope = RuleScope.DOMAIN
        else:
            continue
        rank = (scope, rule.action is RuleAction.ALLOW)
        if best is None or rank > best_rank:
            best, best_rank = rule, rank
    return best


def blocking_rule(rules: Iterable[SenderRule], recipient: str) -> SenderRule | None:
    """The block entry refusing the sender for ``recipient``, or None if it may write."""
    rule = deciding_rule(rules, recipient)
    return rule if rule is not None and rule.action is RuleAction.BLOCK else None


def sender_blocked(sender: str, recipients: Sequence[str]) -> SenderBlocked:
    """The refusal a blocked sender gets; it names no entry (the sender need not learn
    the lists' patterns).  ``recipients`` as the client gave them."""
    shown = headers.header_safe(sender)
    if len(recipients) == 1:
        recipient = headers.header_safe(recipients[0].strip().strip("<>"))
        return SenderBlocked(f"sender <{shown}> is blocked for <{recipient}>")
    return SenderBlocked(f"sender <{shown}> is blocked for every recipient of this message")


def describe(rule: SenderRule) -> str:
    """An entry as an event or a log names it: ``block entry *@x.test for example.test``."""
    return f"{rule.action.value} entry {rule.pattern} for {rule.target or 'every recipient'}"


@dataclass(frozen=True, slots=True)
class SenderBlocklist:
    rules: SenderRules

    async def __call__(self, ctx: MessageContext, pending: Sequence[Recipient]
                       ) -> Mapping[str, Decision]:
        sender = judged_sender(ctx.envelope.mail_from)
        if not sender:
            return {}
        found = await self.rules.matching(sender)
        if not found:  # the usual case: no entry names this sender
            return {}
        blocked: dict[str, SenderRule] = {}
        for rcpt in pending:
            rule = blocking_rule(found, rcpt.canonical)
            if rule is not None:
                blocked[rcpt.canonical] = rule
        if not blocked:
            return {}
        if len(blocked) == len(pending):
            refusal = Decision.reject(sender_blocked(sender, [r.address for r in pending]))
            return dict.fromkeys(blocked, refusal)
        return {canonical: Decision.discard(f"sender <{headers.header_safe(sender)}> blocked "
                                            f"by the {describe(rule)}")
                for canonical, rule in blocked.items()}
