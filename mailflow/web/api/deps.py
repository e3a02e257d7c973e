"""What every API route gets: the services, the caller, and the way to record a change.

The services are synchronous and touch the database; every call goes through the
store runner's threads (:meth:`ApiDeps.read`, :meth:`ApiDeps.write`) so that no route
blocks the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, ParamSpec, Protocol, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mailflow.errors import NotFound, TooManyAttempts, Unauthenticated
from mailflow.model import MailingList
from mailflow.pipeline.process.commands import ListCommands
from mailflow.services.access import AccessService, Principal
from mailflow.services.directory import DirectoryService
from mailflow.services.moderation import Moderation, ReadContent, content_reader
from mailflow.services.queue_operations import QueueOperations
from mailflow.services.stats import StatsService
from mailflow.services.subscriptions import Subscriptions
from mailflow.services.trace import TraceService
from mailflow.store.operations import OperationsStore
from mailflow.store.runner import StoreRunner

P = ParamSpec("P")
T = TypeVar("T")


class FailureLimiter(Protocol):
    """Failed attempts per key in a window (``ingress.limiter.FailedAuthLimiter``)."""

    def blocked_for(self, client: str) -> float: ...

    def failed(self, client: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ApiDeps:
    runner: StoreRunner
    directory: DirectoryService
    access: AccessService
    clients: FailureLimiter    # failed tokens and logins per client address
    accounts: FailureLimiter   # failed logins per account
    body_timeout: float = 60.0  # a request body must arrive within this (http_request_timeout)
    # A blob file's bytes by hash (the relay's blob store): moderation reads held posts.
    read_blob: Callable[[str], bytes] | None = None
    # The list commands step (its tokens and public URL): approving a request to join
    # mails the welcome a reply to a confirmation would.  None: no requests here.
    commands: ListCommands | None = None

    @property
    def moderation(self) -> Moderation:
        """The CLI's moderation service, on the API's store and clock."""
        return Moderation(self.runner.repo, self.directory.clock, self._read_content())

    @property
    def subscriptions(self) -> Subscriptions:
        """The CLI's ``mailflow requests`` service, on the API's store and clock."""
        if self.commands is None:
            raise NotFound("request", "", "no subscription requests on this instance")
        return Subscriptions(self.runner.repo, self.directory.clock, self.commands)

    def _read_content(self) -> ReadContent:
        read_blob = self.read_blob

        def no_file(digest: str) -> bytes:
            raise FileNotFoundError(digest)

        return content_reader(self.runner.repo, read_blob or no_file)

    @property
    def operations(self) -> OperationsStore:
        return OperationsStore(self.runner.engines)

    @property
    def queue(self) -> QueueOperations:
        return QueueOperations(self.operations, self.directory.clock.now)

    @property
    def trace(self) -> TraceService:
        return TraceService(self.operations)

    @property
    def stats(self) -> StatsService:
        return StatsService(self.operations, self.directory.clock)

    async def read(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.runner.read(fn, *args, **kwargs)

    async def write(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.runner.write(fn, *args, **kwargs)

    async def changed(self, caller: Principal, action: str, target: str = "",
                      detail: str = "") -> None:
        """Record a change the caller made in the audit log."""
        await self.runner.write(self.access.record, caller.actor, action, target, detail)

    async def visible_list(self, caller: Principal, address: str, *,
                           change: bool = False) -> MailingList:
        """The list at ``address`` if the caller may read it (``change``: change it);
        else NotFound, as if it did not exist, or Forbidden."""
        found = await self.read(self.directory.get_list, address)
        caller.require_list(found.address, change=change)
        return found

    async def list_scope(self, caller: Principal, list_address: str | None, *,
                         change: bool = False) -> str | None:
        """The list a request is about (canonical), checked against the caller's roles;
        none (every list, or the global entries: blank or None) is a site admin's."""
        if list_address is None or not list_address.strip():
            if change:
                caller.require_write()
            caller.require_admin()
            return None
        return (await self.visible_list(caller, list_address, change=change)).address


def get_deps(request: Request) -> ApiDeps:
    deps: ApiDeps = request.app.state.api
    return deps


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def check_not_blocked(limiter: FailureLimiter, key: str, what: str) -> None:
    wait = limiter.blocked_for(key)
    if wait:
        raise TooManyAttempts(f"too many failed {what}; try again in {int(wait) + 1} s",
                              wait)


_bearer = HTTPBearer(auto_error=False, description="an API token: `mailflow token create`")


async def get_caller(request: Request, deps: Annotated[ApiDeps, Depends(get_deps)],
                     credentials: Annotated[HTTPAuthorizationCredentials | None,
                                            Depends(_bearer)]) -> Principal:
    """The caller of a request by its bearer token; too many wrong tokens from one
    client address are refused (429) before the next is looked at."""
    client = client_of(request)
    check_not_blocked(deps.clients, client, "authentications from this address")
    if credentials is None:
        raise Unauthenticated("an API token is needed: Authorization: Bearer <token>")
    try:
        return await deps.read(deps.access.principal, credentials.credentials.strip())
    except Unauthenticated:
        deps.clients.failed(client)
        raise


async def get_writer(caller: Annotated[Principal, Depends(get_caller)]) -> Principal:
    """The caller of a request that changes something: a write token."""
    caller.require_write()
    return caller


async def get_admin(caller: Annotated[Principal, Depends(get_caller)]) -> Principal:
    caller.require_admin()
    return caller


async def get_admin_writer(caller: Annotated[Principal, Depends(get_writer)]) -> Principal:
    caller.require_admin()
    return caller


Deps = Annotated[ApiDeps, Depends(get_deps)]
Caller = Annotated[Principal, Depends(get_caller)]
Writer = Annotated[Principal, Depends(get_writer)]
Admin = Annotated[Principal, Depends(get_admin)]
AdminWriter = Annotated[Principal, Depends(get_admin_writer)]


async def authenticate(request: Request, deps: ApiDeps) -> Principal:
    """The caller of a request outside the API's routes (``/metrics``)."""
    return await get_caller(request, deps, await _bearer(request))
