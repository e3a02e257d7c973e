"""The message trace as the web UI shows it: :class:`~mailflow.services.trace.TraceService`'s
result (the same query ``mailflow trace`` runs) arranged into one timeline per message,
with each step's phase, and what a list owner may see of it.

Nothing here reads the store: the timelines are :class:`~mailflow.model.MessageTrace`
values, arranged.  A site admin sees everything; an owner or moderator sees the messages
addressed to one of their lists, and of those only their lists' deliveries and the steps
that name no other recipient of the message (a post to two lists must not show one
list's owner the other's members).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from mailflow import addresses
from mailflow.model import DeliveryRow, DeliveryStatus, MessageStatus, MessageTrace, TraceStep
from mailflow.services.access import Principal

Tone = Literal["ok", "warn", "bad", "info"]
Phase = Literal["receipt", "decision", "expansion", "moderation", "attempt", "operator",
                "final", "other"]

# An event kind (``TraceStep.kind``) -> the phase of the message's life it belongs to.
PHASES: Final[dict[str, Phase]] = {
    "received": "receipt",
    "held": "decision", "discarded": "decision", "tagged": "decision",
    "rejected": "moderation", "released": "moderation", "expired": "moderation",
    "moderators_notified": "moderation",
    "expanded": "expansion", "forwarded": "expansion", "auto_reply": "expansion",
    "deferred": "attempt", "failed": "final", "delivered": "final",
    "retry": "operator", "hold": "operator", "release": "operator", "delete": "operator",
}
TONES: Final[dict[str, Tone]] = {
    "delivered": "ok", "released": "ok",
    "deferred": "warn", "held": "warn", "hold": "warn", "moderators_notified": "info",
    "failed": "bad", "rejected": "bad", "discarded": "bad", "expired": "bad",
    "delete": "bad", "deleted": "bad",
}
STATUS_TONES: Final[dict[str, Tone]] = {
    DeliveryStatus.DELIVERED.value: "ok",
    DeliveryStatus.DEFERRED.value: "warn", DeliveryStatus.HELD.value: "warn",
    DeliveryStatus.FAILED.value: "bad", DeliveryStatus.DELETED.value: "bad",
}


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    at: float
    kind: str
    phase: Phase
    tone: Tone
    detail: str
    recipient: str | None


@dataclass(frozen=True, slots=True)
class RecipientState:
    """Where one delivery stands now (its final state once it has one)."""

    delivery_id: int
    recipient: str
    list_address: str | None
    status: str
    tone: Tone
    final: bool
    attempts: int
    last_reply: str | None


@dataclass(frozen=True, slots=True)
class MessageTimeline:
    queue_id: str
    message_id: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    size: int
    received_at: float
    status: str
    peer: str
    helo: str
    protocol: str
    matched_as: tuple[str, ...]  # why the query found it: "queue id", "sender", …
    entries: tuple[TimelineEntry, ...]
    recipients: tuple[RecipientState, ...]
    hidden_deliveries: int       # deliveries of lists the viewer has no role on


def _list_of(rcpt: str) -> str:
    return addresses.untagged(addresses.canonical(rcpt))[0]


def visible(caller: Principal, trace: MessageTrace) -> bool:
    """Whether ``caller`` may see ``trace`` at all: an admin, or a role on one of the
    lists the message was addressed to or delivered through."""
    if caller.is_admin:
        return True
    return (any(caller.may_read_list(_list_of(r)) for r in trace.message.rcpt_tos)
            or any(d.list_address is not None and caller.may_read_list(d.list_address)
                   for d in trace.deliveries))


def matched_as(query: str, trace: MessageTrace) -> tuple[str, ...]:
    """Which of the message's attributes ``query`` named (as ``find_messages`` matches
    them), so the page can say why a message is in the result."""
    query = query.strip()
    bare = query.strip("<>").lower()
    message = trace.message
    found = []
    if message.id == query:
        found.append("queue id")
    if message.header_id and message.header_id.strip("<>").lower() == bare:
        found.append("Message-ID")
    if "@" in bare:
        if message.mail_from.lower() == bare:
            found.append("sender")
        if (any(r.lower() == bare for r in message.rcpt_tos)
                or any(d.recipient.lower() == bare for d in trace.deliveries)):
            found.append("recipient")
    return tuple(found)


def _received(trace: MessageTrace, shown_rcpts: Iterable[str]) -> TimelineEntry:
    m = trace.message
    held = " (held)" if m.status is MessageStatus.HELD else ""
    detail = (f"from <{m.mail_from}> to {', '.join(shown_rcpts) or '-'} via {m.protocol}"
              f" from {m.peer or '-'} (HELO {m.helo or '-'}), {m.size} bytes{held}")
    return TimelineEntry(m.received_at, "received", "receipt", "info", detail, None)


def _entry(step: TraceStep) -> TimelineEntry:
    return TimelineEntry(step.at, step.kind, PHASES.get(step.kind, "other"),
                         TONES.get(step.kind, "info"), step.detail, step.recipient)


def _state(row: DeliveryRow) -> RecipientState:
    final = row.status in (DeliveryStatus.DELIVERED.value, DeliveryStatus.FAILED.value,
                           DeliveryStatus.DELETED.value)
    return RecipientState(row.id, row.recipient, row.list_address, row.status,
                          STATUS_TONES.get(row.status, "info"), final, row.attempts,
                          row.last_reply)


def timeline(caller: Principal, query: str, trace: MessageTrace) -> MessageTimeline:
    """``trace`` as ``caller`` may see it (call :func:`visible` first)."""
    m = trace.message
    if caller.is_admin:
        rows = list(trace.deliveries)
        rcpts = list(m.rcpt_tos)
        hidden_names: list[str] = []
    else:
        rows = [d for d in trace.deliveries
                if d.list_address is not None and caller.may_read_list(d.list_address)]
        rcpts = [r for r in m.rcpt_tos if caller.may_read_list(_list_of(r))]
        hidden_names = [r.lower() for r in m.rcpt_tos if r not in rcpts]
        hidden_names += [d.recipient.lower() for d in trace.deliveries if d not in rows]
    shown_ids = {d.id for d in rows}
    entries = [_received(trace, rcpts)]
    for step in trace.steps:
        if step.kind == "received" and step.delivery_id is None:
            continue  # rebuilt above, with only the recipients the viewer may see
        if step.delivery_id is not None:
            if step.delivery_id not in shown_ids:
                continue
        elif any(name in step.detail.lower() for name in hidden_names):
            continue
        entries.append(_entry(step))
    return MessageTimeline(
        queue_id=m.id, message_id=m.header_id, mail_from=m.mail_from, rcpt_tos=tuple(rcpts),
        size=m.size, received_at=m.received_at, status=m.status.value, peer=m.peer,
        helo=m.helo, protocol=m.protocol, matched_as=matched_as(query, trace),
        entries=tuple(entries), recipients=tuple(_state(d) for d in rows),
        hidden_deliveries=len(trace.deliveries) - len(rows))


def timelines(caller: Principal, query: str, traces: Iterable[MessageTrace]
              ) -> list[MessageTimeline]:
    """The traces ``caller`` may see, each as a timeline."""
    return [timeline(caller, query, t) for t in traces if visible(caller, t)]
