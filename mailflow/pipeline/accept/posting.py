"""A list's posting policy: who may post (``open``, ``members``, ``moderated``, ``announce``).

**Who is posting.**  Both the envelope sender and every address of the ``From:`` field
are checked against the list's roster, and the post counts as coming from the *least*
privileged of them: a post whose ``From:`` names a moderator but whose envelope sender
is not on the roster is a non-member's.  Neither is authenticated (until DKIM/DMARC
checks come), but a forger must now guess two addresses, and the envelope sender alone
is known at ``RCPT TO``: a sender it already disqualifies is refused there, before the
client sends the message (see :func:`rcpt_refusal`); the ``From:`` field only after
``DATA``.  The null sender and addresses without ``@`` identify nobody: a message with
no identity left is a non-member's.

**What each policy admits** (owners and moderators always post; ``role`` None is a
non-member):

=============  ==========================  ==================================
policy         members                     non-members
=============  ==========================  ==================================
open           accepted                    accepted
members        accepted                    the list's non-member action
moderated      held for a moderator        the list's non-member action
announce       the non-member action       the list's non-member action
=============  ==========================  ==================================

The non-member action is ``reject`` (550 5.7.1 with a text saying what to do),
``hold`` (kept for a moderator, ``mailflow held``) or ``discard`` (accepted, dropped, an
event says why).  The rosters of all of a message's restricted lists are read in one
query (:class:`Roster`); open lists, the usual case, cost none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Final, Protocol

from mailflow import addresses, headers
from mailflow.errors import PostingRefused
from mailflow.model import MailingList, MemberRole, NonMemberAction, PostingPolicy
from mailflow.pipeline.accept.recipients import Lookup
from mailflow.pipeline.context import Decision, MessageContext, Recipient

# Higher is more privileged; the least privileged identity of a post decides.
_RANK: Final = {MemberRole.MEMBER: 0, MemberRole.MODERATOR: 1, MemberRole.OWNER: 2}
MAX_AUTHORS: Final = 10  # From: addresses checked; a field naming more is a non-member's


class Roster(Protocol):
    """Roles on rosters, as the posting policy asks (``services.rosters`` in the relay)."""

    async def roles(self, list_ids: Sequence[int], senders: Sequence[str]
                    ) -> Mapping[tuple[int, str], MemberRole]:
        """The role of each sender (canonical) on each list where it is a member."""
        ...


def restricted(mailing_list: MailingList | None) -> bool:
    """Whether posts to the list depend on who sends them."""
    return mailing_list is not None and mailing_list.posting is not PostingPolicy.OPEN


def envelope_identity(mail_from: str) -> str:
    """The envelope sender as an identity, canonical; '' for none (null sender)."""
    sender = addresses.canonical(mail_from)
    return sender if "@" in sender else ""


def author_identities(header: bytes) -> list[str] | None:
    """The canonical addresses of the ``From:`` field(s); None if there are more than
    :data:`MAX_AUTHORS` (nobody is checked against so many)."""
    found = [addresses.canonical(address) for _, address in
             getaddresses(headers.field_values(header, "From"))]
    authors = list(dict.fromkeys(a for a in found if "@" in a))
    return None if len(authors) > MAX_AUTHORS else authors


def poster(list_id: int, identities: Iterable[str],
           roles: Mapping[tuple[int, str], MemberRole]) -> tuple[MemberRole | None, str]:
    """The least privileged of ``identities`` on the list and its role (None: not a
    member): the identity a refusal names.  ('' and None without identities.)"""
    lowest: tuple[MemberRole | None, str] = (None, "")
    for identity in identities:
        role = roles.get((list_id, identity))
        if role is None:
            return None, identity
        if lowest[0] is None or _RANK[role] < _RANK[lowest[0]]:
            lowest = (role, identity)
    return lowest


def decide(mailing_list: MailingList, role: MemberRole | None, sender: str) -> Decision | None:
    """What the policy makes of a post by ``role``; None: accepted.  ``sender`` names
    the poster in the refusal or the hold reason."""
    policy = mailing_list.posting
    if policy is PostingPolicy.OPEN or (role is not None and role.moderates):
        return None
    if policy is PostingPolicy.MEMBERS and role is not None:
        return None
    if policy is PostingPolicy.MODERATED and role is not None:
        return Decision.hold(f"{mailing_list.address} is moderated: every post waits for "
                             "a moderator")
    return _not_admitted(mailing_list, sender)


def _not_admitted(mailing_list: MailingList, sender: str) -> Decision:
    address = mailing_list.address
    shown = headers.header_safe(sender) if sender else "the sender"
    if mailing_list.posting is PostingPolicy.ANNOUNCE:
        why = f"only the owners and moderators of {address} may post to it"
        refusal = f"{why}; <{shown}> is not one of them"
    else:
        why = f"<{shown}> is not a member of {address}"
        refusal = (f"{why}, and only members may post to it: subscribe first (with the "
                   "address the message comes from), or write to the list's owners")
    action = mailing_list.non_member_action
    if action is NonMemberAction.REJECT:
        return Decision.reject(PostingRefused(refusal))
    reason = f"posting policy of {address}: {why}"
    if action is NonMemberAction.HOLD:
        return Decision.hold(reason)
    return Decision.discard(reason)


def rcpt_refusal(mailing_list: MailingList, sender: str, role: MemberRole | None
                 ) -> PostingRefused | None:
    """The refusal at ``RCPT TO`` of a post whose envelope sender has ``role``: only
    where that alone decides (the ``From:`` field can only lower the role)."""
    if not sender or mailing_list.non_member_action is not NonMemberAction.REJECT:
        return None
    decision = decide(mailing_list, role, sender)
    if decision is None or not isinstance(decision.error, PostingRefused):
        return None
    return decision.error


@dataclass(frozen=True, slots=True)
class PostingPolicyStep:
    """The accept step: each restricted list's policy for the message's sender."""

    lookup: Lookup
    roster: Roster

    async def __call__(self, ctx: MessageContext, pending: Sequence[Recipient]
                       ) -> Mapping[str, Decision]:
        targets: dict[str, MailingList] = {}
        for rcpt in pending:
            resolution = rcpt.resolution or await self.lookup(rcpt.canonical)
            if resolution.kind == "list" and restricted(resolution.mailing_list):
                assert resolution.mailing_list is not None
                targets[rcpt.canonical] = resolution.mailing_list
        if not targets:  # the usual case: open lists only
            return {}
        sender = envelope_identity(ctx.envelope.mail_from)
        authors = author_identities(ctx.header)
        identities = list(dict.fromkeys([*([sender] if sender else []), *(authors or [])]))
        # Too many authors, or no identity at all: a non-member's, without a query.
        roles = (await self.roster.roles(sorted({t.id for t in targets.values()}), identities)
                 if identities and authors is not None else {})
        fallback = next(iter(authors or []), sender)
        decided: dict[str, Decision] = {}
        for canonical, target in targets.items():
            role, who = poster(target.id, identities, roles)
            decision = decide(target, role, who or fallback)
            if decision is not None:
                decided[canonical] = decision
        return decided
