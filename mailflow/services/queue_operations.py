"""Operator actions on the send queue: retry now, hold, release, delete (``mailflow
queue …``, and ``POST /api/v1/queue/{action}``).

Every action leaves deliveries in flight alone: a sender holds them under a lease, and
its outcome is recorded only under that lease, so acting on them here could not stop the
copy already on the wire.  The action reports them as skipped; once their outcome is in
(a deferral), the action can be repeated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mailflow.errors import ConfirmationNeeded, InvalidInput
from mailflow.model import DeliveryRow, DeliveryStatus, QueueChange, QueueSelection
from mailflow.services.directory import validated_address
from mailflow.services.timespec import parse_duration
from mailflow.store.operations import OperationsStore

DELETED_REPLY = "deleted by an operator"
WAITING = (DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED)
QUEUE_ID_LENGTH = 21  # mailflow.ids.new_message_id
ACTIONS = ("retry", "hold", "release", "delete")


def selection_of(statuses: Sequence[str | DeliveryStatus], list_address: str | None,
                 domain: str | None, older_than: str | None, ids: Sequence[str],
                 now: float) -> QueueSelection:
    """The deliveries an operator's options name (``mailflow queue``, ``POST /queue/…``):
    an ID is a delivery id (digits) or a queue id (21 hex digits, which may all be
    decimal ones)."""
    chosen = []
    for status in statuses:
        try:
            chosen.append(DeliveryStatus(status))
        except ValueError:
            raise InvalidInput(f"invalid status {status!r}: one of "
                               f"{', '.join(s.value for s in DeliveryStatus)}") from None
    numbers = tuple(int(i) for i in ids if i.isdigit() and len(i) < QUEUE_ID_LENGTH)
    queue_ids = tuple(i for i in ids if not i.isdigit() or len(i) >= QUEUE_ID_LENGTH)
    return QueueSelection(
        statuses=tuple(chosen),
        list_address=validated_address(list_address) if list_address else None,
        domain=domain.strip().lower() if domain else None,
        created_before=None if older_than is None else now - parse_duration(older_than),
        ids=numbers, queue_ids=queue_ids)


class QueueOperations:
    def __init__(self, store: OperationsStore, now: Callable[[], float]) -> None:
        self.store = store
        self.now = now

    def show(self, selection: QueueSelection, limit: int) -> list[DeliveryRow]:
        return self.store.select_deliveries(selection, limit)

    def count(self, selection: QueueSelection) -> int:
        return self.store.count_selected(selection)

    def act(self, action: str, selection: QueueSelection, *, confirmed: bool = False
            ) -> QueueChange:
        """One of :data:`ACTIONS`; a delete of more than one delivery must be
        ``confirmed`` (the CLI's ``--yes``)."""
        if action not in ACTIONS:
            raise InvalidInput(f"invalid queue action {action!r}: one of {', '.join(ACTIONS)}")
        if action == "delete" and not confirmed and not selection.empty:
            count = self.count(selection)
            if count > 1:
                raise ConfirmationNeeded(count, f"this selects {count} deliveries; confirm "
                                         "to delete them all")
        change: QueueChange = getattr(self, action)(selection)
        return change

    def retry(self, selection: QueueSelection) -> QueueChange:
        """Queued and deferred deliveries become due now (the scheduler finds them within
        ``poll_interval``)."""
        now = self.now()
        return self.store.change_deliveries(_required(selection), WAITING, now, "retry",
                                            due_at=now)

    def hold(self, selection: QueueSelection) -> QueueChange:
        """Queued and deferred deliveries are not attempted until released; their
        message (and its content) is kept meanwhile."""
        return self.store.change_deliveries(_required(selection), WAITING, self.now(), "hold",
                                            status=DeliveryStatus.HELD.value)

    def release(self, selection: QueueSelection) -> QueueChange:
        """Held deliveries are queued again, due now."""
        now = self.now()
        return self.store.change_deliveries(_required(selection), (DeliveryStatus.HELD,), now,
                                            "release", status=DeliveryStatus.QUEUED.value,
                                            due_at=now)

    def delete(self, selection: QueueSelection) -> QueueChange:
        """Queued, deferred and held deliveries are never attempted: final, ``deleted``
        (not ``failed``: nothing counts it against the recipient)."""
        return self.store.change_deliveries(
            _required(selection), (*WAITING, DeliveryStatus.HELD), self.now(), "delete",
            status=DeliveryStatus.DELETED.value, lease_owner=None, last_reply=DELETED_REPLY)


def _required(selection: QueueSelection) -> QueueSelection:
    """An action needs a criterion: acting on the whole queue must be asked for by
    naming statuses at least."""
    if selection.empty:
        raise InvalidInput("no deliveries selected: give delivery or queue ids, or "
                           "--status, --list, --domain or --older-than")
    return selection
