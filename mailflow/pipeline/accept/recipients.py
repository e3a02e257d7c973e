"""Is each recipient a list, an alias or a list's bounce or robot address here?

An SMTP or LMTP client was answered at RCPT time (the accept service asks the same
question through :func:`refusal`); this step is in the chain for submissions without
RCPT (HTTP, ``mailflow pipe``), after their size and syntax checks, as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from mailflow import addresses
from mailflow.errors import (
    InvalidRecipientAddress,
    InvalidSrsAddress,
    SmtpReplyError,
    UnknownDomain,
    UnknownRecipient,
)
from mailflow.model import Resolution
from mailflow.pipeline.context import Decision, MessageContext, Recipient

Lookup = Callable[[str], Awaitable[Resolution]]  # canonical address -> what it is here


def refusal(address: str, resolution: Resolution) -> SmtpReplyError | None:
    """The error refusing ``address`` (as the client gave it), or None if it is ours."""
    if resolution.kind == "unknown_domain":
        problem = addresses.domain_problem(address)
        if problem is not None:  # no relay could take it: say why, not "relaying denied"
            return InvalidRecipientAddress(f"<{address}>: {problem}")
        return UnknownDomain(f"relaying denied: <{address}> is not in a domain of this relay")
    if resolution.kind == "bad_srs":
        return InvalidSrsAddress(f"<{address}> is not a valid bounce address here "
                                 f"({resolution.detail})")
    if resolution.kind == "unknown_address":
        return UnknownRecipient(f"no list or alias <{address}> here")
    return None


@dataclass(frozen=True, slots=True)
class RecipientCheck:
    lookup: Lookup

    async def __call__(self, ctx: MessageContext, pending: Sequence[Recipient]
                       ) -> Mapping[str, Decision]:
        decisions: dict[str, Decision] = {}
        for rcpt in pending:
            if rcpt.resolution is None:
                rcpt.resolution = await self.lookup(rcpt.canonical)
            error = refusal(rcpt.address, rcpt.resolution)
            if error is not None:
                decisions[rcpt.canonical] = Decision.reject(error)
        return decisions
