"""Readiness: whether this relay can take mail now (``/readyz``): its store answers, its
blob store can be written (the folder, or the S3 bucket), and its default egress's next
hop takes connections.  A split role checks only what it uses (docs/scaling.md): an
ingress its store and blob store, a web node its store.

The egress check opens (and closes) a TCP connection, so its answer is kept
``egress_ttl`` seconds (an S3 blob store keeps its own answer as long): a load balancer
polling every second does not become a connection storm on the next hop.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from mailflow.blobs import Blobs
from mailflow.smtp_relay import SmtpRelay
from mailflow.store.operations import OperationsStore
from mailflow.store.runner import StoreRunner

CHECK_TIMEOUT = 3.0  # seconds each check may take
EGRESS_TTL = 5.0


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


class Readiness:
    def __init__(self, runner: StoreRunner, blobs: Blobs | None, egress: SmtpRelay | None,
                 egress_ttl: float = EGRESS_TTL, *, sends: bool = True) -> None:
        """``blobs`` None: a role that reads no bodies (web); ``sends`` False: a role
        without an egress (ingress, web), whose readiness does not depend on one."""
        self.runner = runner
        self.store = OperationsStore(runner.engines)
        self.blobs = blobs  # None: a role that reads no bodies (web)
        self.egress = egress  # None: a provider without a next hop to reach (stdout:)
        self.egress_ttl = egress_ttl
        self.sends = sends
        self._egress_checked: tuple[float, Check] | None = None

    async def checks(self) -> list[Check]:
        checks = [self._store()]
        if self.blobs is not None:
            checks.append(self._blobs())
        if self.sends:
            checks.append(self._egress())
        return list(await asyncio.gather(*checks))

    async def _store(self) -> Check:
        try:
            await asyncio.wait_for(self.runner.read(self.store.ping), CHECK_TIMEOUT)
        except Exception as exc:  # any failure means: cannot store mail
            return Check("store", False, f"{type(exc).__name__}: {exc}"[:300])
        return Check("store", True)

    async def _blobs(self) -> Check:
        assert self.blobs is not None
        try:
            problem = await asyncio.wait_for(asyncio.to_thread(self.blobs.problem),
                                             CHECK_TIMEOUT)
        except TimeoutError:
            problem = f"{self.blobs.describe()} did not answer"
        return Check("blob_store", problem is None, problem or "")

    async def _egress(self) -> Check:
        if self.egress is None:
            return Check("egress", True)
        now = time.monotonic()
        if self._egress_checked is not None and self._egress_checked[0] > now:
            return self._egress_checked[1]
        host, port = self.egress.host, self.egress.port
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                               CHECK_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            check = Check("egress", False, f"{host}:{port}: {exc or 'timed out'}")
        else:
            writer.close()
            check = Check("egress", True)
        self._egress_checked = (now + self.egress_ttl, check)
        return check
