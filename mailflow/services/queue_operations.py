"""Operator actions on the send queue: retry now, hold, release, delete (``mailflow
queue …``, and the REST API to come).

Every action leaves deliveries in flight alone: a sender holds them under a lease, and
its outcome is recorded only under that lease, so acting on them here could not stop the
copy already on the wire.  The action reports them as skipped; once their outcome is in
(a deferral), the action can be repeated.
"""

from __future__ import annotations

from collections.abc import Callable

from mailflow.errors import InvalidInput
from mailflow.model import DeliveryRow, DeliveryStatus, QueueChange, QueueSelection
from mailflow.store.operations import OperationsStore

DELETED_REPLY = "deleted by an operator"
WAITING = (DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED)


class QueueOperations:
    def __init__(self, store: OperationsStore, now: Callable[[], float]) -> None:
        self.store = store
        self.now = now

    def show(self, selection: QueueSelection, limit: int) -> list[DeliveryRow]:
        return self.store.select_deliveries(selection, limit)

    def count(self, selection: QueueSelection) -> int:
        return self.store.count_selected(selection)

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
