"""A member's bounce score, as GNU Mailman keeps it: the rules, without the storage.

* a permanent bounce adds 1, a temporary one 0.5, at most one bounce a (UTC) day
  counts (a burst of bounces for one post is one bad day, not five);
* a score whose last bounce is older than ``stale_after`` (7 days) starts again at 0;
* at ``threshold`` (the list's ``bounce_threshold``, 5) the member is disabled: kept on
  the roster, sent nothing;
* a disabled member gets ``warnings`` (3) warnings, one every ``warning_interval``
  (7 days); the owners are told with the first; an interval after the last one the
  member is removed.

Pure functions of a :class:`BounceState` and the time, so the whole cycle is tested
on a fake clock; ``store/repository.py`` reads and writes the state around them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from mailflow.model import BounceKind, MemberStatus

DAY = 86400.0
WEIGHTS = {BounceKind.PERMANENT: 1.0, BounceKind.TEMPORARY: 0.5}


@dataclass(frozen=True, slots=True)
class BouncePolicy:
    stale_after: float = 7 * DAY
    warnings: int = 3
    warning_interval: float = 7 * DAY


@dataclass(frozen=True, slots=True)
class BounceState:
    """What the members table keeps of one member's bounces."""

    status: MemberStatus = MemberStatus.ACTIVE
    score: float = 0.0
    last_bounce_at: float | None = None
    disabled_at: float | None = None
    warnings_sent: int = 0
    last_warning_at: float | None = None


class Due(enum.StrEnum):
    """What the periodic pass owes a member now."""

    NOTHING = "nothing"
    RESET = "reset"    # no bounce for ``stale_after``: the score goes back to 0
    WARN = "warn"      # a warning to the disabled member (the first also tells the owners)
    REMOVE = "remove"  # every warning sent, an interval passed: off the roster


def after_bounce(state: BounceState, kind: BounceKind, now: float, threshold: float,
                 policy: BouncePolicy = BouncePolicy()) -> tuple[BounceState, bool]:
    """The state after a bounce at ``now``, and whether it counted.

    Only an active member's bounces count: a disabled member is already sent nothing.
    """
    weight = WEIGHTS.get(kind)
    if weight is None or state.status is not MemberStatus.ACTIVE:
        return state, False
    last = state.last_bounce_at
    if last is not None and int(last // DAY) == int(now // DAY):
        return state, False
    score = state.score if last is None or now - last < policy.stale_after else 0.0
    score += weight
    if score >= threshold:
        return BounceState(MemberStatus.DISABLED, score, now, disabled_at=now), True
    return replace(state, score=score, last_bounce_at=now), True


def due(state: BounceState, now: float, policy: BouncePolicy = BouncePolicy()) -> Due:
    if state.status is MemberStatus.ACTIVE:
        stale = (state.score > 0 and state.last_bounce_at is not None
                 and now - state.last_bounce_at >= policy.stale_after)
        return Due.RESET if stale else Due.NOTHING
    if state.status is not MemberStatus.DISABLED or state.disabled_at is None:
        return Due.NOTHING  # disabled by hand, or unsubscribed: not ours to touch
    last = state.last_warning_at
    if last is not None and now - last < policy.warning_interval:
        return Due.NOTHING
    return Due.WARN if state.warnings_sent < policy.warnings else Due.REMOVE


def after(state: BounceState, action: Due, now: float) -> BounceState:
    """The state once ``action`` is done (REMOVE: the row goes; nothing to keep)."""
    if action is Due.RESET:
        return replace(state, score=0.0)
    if action is Due.WARN:
        return replace(state, warnings_sent=state.warnings_sent + 1, last_warning_at=now)
    return state
