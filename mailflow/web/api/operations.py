"""Operator actions and views: ``POST /queue/{action}`` (``mailflow queue retry|hold|
release|delete``), ``GET /trace`` (``mailflow trace``) and ``GET /stats`` (the
dashboard's figures), through the CLI's services.

The queue actions are a site admin's, or an owner's for the deliveries through their
list (the selection is narrowed to that list: every criterion must hold).  The trace
and the statistics show every list's traffic: a site admin's.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from mailflow.errors import ConfirmationNeeded
from mailflow.model import DeliveryStatus, MessageTrace
from mailflow.services.queue_operations import selection_of
from mailflow.services.stats import MAX_HOURS
from mailflow.services.timespec import parse_moment
from mailflow.services.trace import MAX_LIMIT as TRACE_MAX_LIMIT
from mailflow.web.api.deps import Admin, Deps, Writer
from mailflow.web.api.queue import DeliveryOut

router = APIRouter(tags=["queue"])
MAX_IDS: Final = 10_000
QueueAction = Annotated[Literal["retry", "hold", "release", "delete"],
                        Path(description="retry: due now; hold: not sent until released; "
                                         "release: queued again; delete: never sent")]


class QueueActionIn(BaseModel):
    """Which deliveries: every criterion given must hold; at least one is needed."""

    status: list[DeliveryStatus] = Field(default_factory=list, max_length=10)
    list_address: str | None = Field(default=None, max_length=320, alias="list",
                                     description="only deliveries through this list or "
                                                 "alias")
    domain: str | None = Field(default=None, max_length=253,
                               description="only deliveries to recipients of this domain")
    older_than: str | None = Field(default=None, max_length=20, examples=["2h"],
                                   description="only deliveries created this long ago or "
                                               "more (15m, 2h, 7d)")
    ids: list[Annotated[str, Field(max_length=32)]] = Field(
        default_factory=list, max_length=MAX_IDS,
        description="delivery ids (digits) or queue ids (message ids)")
    confirm: bool = Field(default=False, description="delete: needed when more than one "
                                                     "delivery is selected")


class QueueActionOut(BaseModel):
    action: str
    changed: int
    skipped: int = Field(description="selected but left alone: in flight, or not in a "
                                     "state the action applies to")


@router.post("/queue/{action}")
async def queue_action(action: QueueAction, body: QueueActionIn, deps: Deps,
                       caller: Writer) -> QueueActionOut:
    """Act on the selected deliveries, as ``mailflow queue ACTION``."""
    target = body.list_address
    if not caller.is_admin:
        if not target:
            caller.require_admin()  # an owner names their list
        found = await deps.read(deps.directory.get_list, target or "")
        caller.require_list(found.address, change=True)
        target = found.address
    queue = deps.queue
    selection = selection_of(body.status, target, body.domain, body.older_than, body.ids,
                             queue.now())
    try:
        change = await deps.write(queue.act, action, selection, confirmed=body.confirm)
    except ConfirmationNeeded as exc:
        raise ConfirmationNeeded(exc.count, f"this selects {exc.count} deliveries; send "
                                 "confirm: true to delete them all") from None
    given = body.model_dump(exclude_defaults=True, mode="json", by_alias=True)
    await deps.changed(caller, f"queue.{action}", target or "*", " ".join(
        f"{k}={v!r}" for k, v in sorted(given.items()) if k != "ids")
        + (f" ids={len(body.ids)}" if body.ids else "")
        + f" changed={change.changed} skipped={change.skipped}")
    return QueueActionOut(action=action, changed=change.changed, skipped=change.skipped)


class TraceStepOut(BaseModel):
    at: float
    kind: str
    detail: str
    recipient: str | None
    delivery_id: int | None


class MessageTraceOut(BaseModel):
    id: str
    message_id: str = Field(description="its Message-ID field ('' if none)")
    mail_from: str
    rcpt_tos: list[str]
    size: int
    received_at: float
    peer: str
    helo: str
    protocol: str
    status: str
    steps: list[TraceStepOut]
    deliveries: list[DeliveryOut]

    @classmethod
    def of(cls, t: MessageTrace) -> MessageTraceOut:
        m = t.message
        return cls(id=m.id, message_id=m.header_id, mail_from=m.mail_from,
                   rcpt_tos=list(m.rcpt_tos), size=m.size, received_at=m.received_at,
                   peer=m.peer, helo=m.helo, protocol=m.protocol, status=m.status.value,
                   steps=[TraceStepOut(at=s.at, kind=s.kind, detail=s.detail,
                                       recipient=s.recipient, delivery_id=s.delivery_id)
                          for s in t.steps],
                   deliveries=[DeliveryOut.of(d) for d in t.deliveries])


class TraceOut(BaseModel):
    items: list[MessageTraceOut] = Field(description="newest first")
    truncated: bool = Field(description="more messages match: narrow the time range or "
                                        "raise limit")


@router.get("/trace")
async def trace(deps: Deps, caller: Admin,
                q: Annotated[str, Query(min_length=1, max_length=320, description=(
                    "a queue id, a Message-ID, or a sender's or recipient's address"))],
                since: Annotated[str | None, Query(max_length=40, description=(
                    "received after this: 2h (ago) or 2026-12-24T09:00"))] = None,
                until: Annotated[str | None, Query(max_length=40)] = None,
                limit: Annotated[int, Query(ge=1, le=TRACE_MAX_LIMIT)] = 20) -> TraceOut:
    """What happened to the messages ``q`` names, as ``mailflow trace --json``."""
    service = deps.trace
    now = deps.directory.clock.now()
    result = await deps.read(service.trace, q,
                             since=None if since is None else parse_moment(since, now),
                             until=None if until is None else parse_moment(until, now),
                             limit=limit)
    return TraceOut(items=[MessageTraceOut.of(t) for t in result.traces],
                    truncated=result.truncated)


class HourOut(BaseModel):
    start: float = Field(description="the hour's first second (epoch seconds)")
    received: int
    delivered: int
    failed: int


class StatsOut(BaseModel):
    deliveries: dict[str, int] = Field(description="deliveries by status, now")
    messages: dict[str, int] = Field(description="messages by status, now")
    hours: list[HourOut] = Field(description="oldest first; the last is the current hour")


@router.get("/stats")
async def stats(deps: Deps, caller: Admin,
                hours: Annotated[int, Query(ge=1, le=MAX_HOURS)] = 24) -> StatsOut:
    """Deliveries by status, and messages received, delivered and failed per hour."""
    per_hour = await deps.read(deps.stats.deliveries_per_hour, hours)
    return StatsOut(deliveries=await deps.read(deps.runner.repo.delivery_counts),
                    messages=await deps.read(deps.runner.repo.message_counts),
                    hours=[HourOut(start=h.start, received=h.received,
                                   delivered=h.delivered, failed=h.failed)
                           for h in per_hour])


