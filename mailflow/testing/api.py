"""The relay's HTTP app with its REST API over a real store, for tests and the bench:
no relay process, the same services, runner threads and limiters as ``Relay`` wires."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fastapi import FastAPI

from mailflow.clock import Clock
from mailflow.confirm_tokens import ConfirmTokens
from mailflow.ingress.limiter import FailedAuthLimiter
from mailflow.model import MembershipAction, MembershipChange
from mailflow.pipeline.process.commands import ListCommands
from mailflow.services.access import AccessService
from mailflow.services.directory import DirectoryService
from mailflow.store import Engines, StoreRunner
from mailflow.store.access import AccessRepository
from mailflow.web.api.deps import ApiDeps
from mailflow.web.app import MonitoringAccess, create_app
from mailflow.web.ui.deps import UiOptions


@dataclass
class ApiHarness:
    app: FastAPI
    deps: ApiDeps

    @property
    def directory(self) -> DirectoryService:
        return self.deps.directory

    @property
    def access(self) -> AccessService:
        return self.deps.access

    def ask_to_join(self, list_address: str, address: str) -> int:
        """A request to join (its id), recorded as a ``subscribe`` command to an
        ``approve`` list records it: for the API's and the UI's tests of deciding one."""
        repo = self.deps.runner.repo
        target = self.directory.get_list(list_address)
        with repo.ingest_transaction() as tx:
            tx.apply_memberships(
                [MembershipChange(target.id, address, MembershipAction.REQUEST)], [], 1000.0)
        return next(r.id for r in repo.subscription_requests(list_address)
                    if r.address == address)


@contextmanager
def api_app(engines: Engines, *, clock: Clock | None = None, max_failures: int = 10,
            monitoring_access: MonitoringAccess = "loopback",
            ui: UiOptions | None = None) -> Iterator[ApiHarness]:
    """The app on ``engines`` (migrated already); its runner stops afterwards, and
    disposes of the engines' pools (a caller may dispose of them again)."""
    runner = StoreRunner(engines)
    deps = ApiDeps(runner, DirectoryService(runner.repo, clock),
                   AccessService(AccessRepository(engines), clock),
                   clients=FailedAuthLimiter(max_failures, 60.0),
                   accounts=FailedAuthLimiter(max_failures, 60.0),
                   commands=ListCommands(ConfirmTokens("api-test-secret", max_age=86_400.0),
                                         "http://relay.test", max_replies=5))
    try:
        yield ApiHarness(create_app(runner, api=deps, ui=ui,
                                    monitoring_access=monitoring_access), deps)
    finally:
        runner.close()
