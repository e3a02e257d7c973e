"""Bounce processing: mail to a list's ``-bounces`` address counted against members.

GNU Mailman's model.  The member a bounce is about comes from the VERP token of the
address it was sent to (``LIST-bounces+<token>@d``, :mod:`mailflow.verp`) when it has
one that names a member, else from the bounce itself (:mod:`.bounce_reading`).  Each
finding becomes a :class:`~mailflow.model.BounceReport`; the write transaction counts
them (:mod:`mailflow.bounce_score`).  A feedback report (RFC 5965) unsubscribes and
suppresses the member who complained.  A bounce is consumed; mail that is no bounce at
all (no VERP token, nothing ``flufl.bounce`` can read: a person who answered a list's
envelope sender) goes on to the list's owners, as Mailman's "forward unrecognized
bounces", with the null sender (:mod:`.owners`).
"""

from __future__ import annotations

from mailflow import addresses
from mailflow.model import BounceKind, BounceReport, BounceSource, ListKind, MailingList
from mailflow.pipeline.context import ProcessContext
from mailflow.pipeline.process.bounce_reading import BounceFindings, read_bounce
from mailflow.pipeline.process.owners import forward_to_owners


def bounces(ctx: ProcessContext) -> None:
    seen: set[str] = set()
    for rcpt in ctx.message.rcpt_tos:
        canonical = addresses.canonical(rcpt)
        if not canonical or canonical in seen:
            continue
        seen.add(canonical)
        resolution = ctx.directory.resolve(canonical)
        target = resolution.mailing_list
        if resolution.kind != "bounces" or target is None:
            continue
        if target.kind is not ListKind.LIST:  # an alias's targets are no members to score
            ctx.event("bounce", f"for {target.address}: not a list, consumed")
            continue
        findings = read_bounce(ctx.content())
        if not resolution.detail and findings.empty:
            forward_to_owners(ctx, target, sender="", why="unrecognized bounce")
            continue
        member = (ctx.directory.verp_member(target, resolution.detail)
                  if resolution.detail else None)
        reports = _reports(target, findings, member)
        roster = set(ctx.directory.roster(target.id)) if reports and member is None else set()
        if member is None:
            reports = [r for r in reports if r.address in roster]
        ctx.bounces.extend(reports)
        if reports:
            named = ", ".join(sorted(f"<{r.address}> {r.kind.value}" for r in reports))
            ctx.event("bounce", f"for {target.address}: {named}")
        else:
            ctx.event("bounce", f"for {target.address}: names no member, consumed")


def _reports(target: MailingList, findings: BounceFindings,
             member: str | None) -> list[BounceReport]:
    if findings.complaint:
        named = {member} if member else findings.complainants
        return [BounceReport(target.id, a, BounceKind.COMPLAINT, BounceSource.ARF)
                for a in sorted(named)]
    if member is not None:
        # The token names the member; the bounce only says how bad it is.  A message
        # we cannot read counts as permanent, as Mailman counts VERP bounces.
        only_delayed = bool(findings.temporary) and not findings.permanent
        kind = BounceKind.TEMPORARY if only_delayed else BounceKind.PERMANENT
        return [BounceReport(target.id, member, kind, BounceSource.VERP)]
    return ([BounceReport(target.id, a, BounceKind.PERMANENT, BounceSource.DSN)
             for a in sorted(findings.permanent)]
            + [BounceReport(target.id, a, BounceKind.TEMPORARY, BounceSource.DSN)
               for a in sorted(findings.temporary)])
