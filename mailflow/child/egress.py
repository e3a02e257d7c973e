"""``ProcessEgress``: the SMTP egress, its transactions sent by the relay's child process.

Why: a fan-out spends much of the relay's one core on SMTP client work (formatting
commands, parsing replies, the event loop around them); the child
(:class:`~mailflow.child.process.ChildProcess`) runs
:class:`~mailflow.egress.smtp.SmtpEgress` on a second core and answers per recipient.
A transaction that finds nothing else under way, after ``QUIET_BEFORE_ALONE`` without a
send, is sent from the relay's own process instead: at idle the child's CPU is asleep,
and waking it adds latency.  Under load everything goes to the child, lone transactions
included (under ingest load sends come often, each alone, and many of them would
otherwise run on the relay's busy event loop).  The figures are in bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from mailflow.child.messages import SmtpEgressSpec
from mailflow.child.process import ChildProcess
from mailflow.egress.smtp import SmtpEgress
from mailflow.memory import DEFAULT_BUDGET
from mailflow.model import RecipientReply
from mailflow.smtp_relay import SmtpRelay

QUIET_BEFORE_ALONE = 0.02  # seconds without a send before one goes in-process again


class ProcessEgress:
    """The :class:`~mailflow.egress.base.Egress` protocol, served by a child process.

    Given a ``child``, it only registers its egress there (the owner of the child starts
    and stops it); without one it runs a child of its own.
    """

    def __init__(self, relay: SmtpRelay, *, pool_size: int, timeout: float,
                 idle_check: float, local_hostname: str | None = None,
                 alone_in_process: bool = True, child: ChildProcess | None = None,
                 name: str = "smtp", transaction_timeout: float = 600.0,
                 payload_cache: int = DEFAULT_BUDGET.payloads) -> None:
        self.name = name
        self._alone = SmtpEgress(relay, pool_size=1, timeout=timeout, idle_check=idle_check,
                                 local_hostname=local_hostname,
                                 transaction_timeout=transaction_timeout,
                                 payload_cache=payload_cache) if alone_in_process else None
        self._alone_busy = False
        self._last_send = -QUIET_BEFORE_ALONE
        self._owns_child = child is None
        self.child = child if child is not None else ChildProcess()
        self.child.add_egress(name, SmtpEgressSpec(relay, pool_size, timeout, idle_check,
                                                   local_hostname, transaction_timeout,
                                                   payload_cache))

    @property
    def children_started(self) -> int:
        return self.child.children_started

    async def start(self) -> None:
        if self._owns_child:
            await self.child.start()

    async def send(self, mail_from: str, recipients: Sequence[str],
                   content: bytes) -> list[RecipientReply]:
        now = asyncio.get_running_loop().time()
        quiet, self._last_send = now - self._last_send >= QUIET_BEFORE_ALONE, now
        if self._alone is not None and quiet and not self._alone_busy and not self.child.busy:
            self._alone_busy = True
            try:
                return await self._alone.send(mail_from, recipients, content)
            finally:
                self._alone_busy = False
        return await self.child.send(self.name, mail_from, recipients, content)

    async def close(self) -> None:
        if self._alone is not None:
            await self._alone.close()
        if self._owns_child:
            await self.child.stop()
