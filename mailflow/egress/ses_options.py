"""The Amazon SES egress's settings, apart from the egress so that naming them does not
import boto3 (:mod:`mailflow.egress.ses` is imported only when SES is used)."""

from __future__ import annotations

from dataclasses import dataclass

from mailflow.egress.token_bucket import PaceFactory
from mailflow.memory import DEFAULT_BUDGET


@dataclass(frozen=True, slots=True)
class SesOptions:
    """The ``ses_*`` settings (docs/configuration.md)."""

    configuration_set: str = ""
    max_send_rate: float = 0.0  # 0: the account's, from GetAccount
    timeout: float = 30.0
    concurrency: int = 8
    feedback_forwarding: bool = True
    payload_cache: int = DEFAULT_BUDGET.payloads
    # The send rate's keeper: this process's token bucket (None), or one shared by every
    # relay of a PostgreSQL store, so that workers on several hosts keep SES's rate.
    pace: PaceFactory | None = None
