"""The interface every egress provider implements.

The scheduler hands a provider one SMTP-transaction-sized unit: an envelope sender, up to
``max_recipients_per_transaction`` recipients sharing one content, and the bytes.  The
provider answers per recipient with an SMTP-style code; a failure that concerns the whole
attempt (no connection, timeout) is raised as :class:`mailflow.errors.EgressUnavailable`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class RecipientReply:
    recipient: str
    code: int
    text: str

    @property
    def delivered(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


class Egress(Protocol):
    name: str

    async def start(self) -> None: ...

    async def send(self, mail_from: str, recipients: Sequence[str],
                   content: bytes) -> list[RecipientReply]: ...

    async def close(self) -> None: ...
