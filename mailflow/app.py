"""Builds a relay from settings, and starts and stops its parts in the right order.

Start: store (migrated) -> pipeline and scheduler -> listeners, so nothing is accepted
before it can be stored and processed.  Stop: listeners first (no new mail), then the
scheduler hands back what it has not sent, then the store closes.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import uvicorn

from mailflow.backoff import RetryPolicy
from mailflow.blobs import BlobStore
from mailflow.child.egress import ProcessEgress
from mailflow.child.listeners import HostedListeners
from mailflow.child.process import ChildProcess
from mailflow.clock import Clock, SystemClock
from mailflow.config import ListenAddress, Settings, parse_provider_url
from mailflow.egress.base import Egress
from mailflow.egress.routes import ProviderOptions, build_provider, build_routed
from mailflow.errors import ConfigurationError
from mailflow.ingress.http import FailedAuthLimiter, create_router
from mailflow.ingress.policy import start_policy_service
from mailflow.ingress.smtp import Listener, start_listener
from mailflow.services.accept import AcceptPolicy, AcceptService, store_lookup
from mailflow.services.commit import GroupCommitter, IngestActivity, InlineExpansion
from mailflow.services.installation import initialise
from mailflow.services.processor import Processor
from mailflow.services.recent import RecentMessages
from mailflow.services.scheduler import Scheduler, SchedulerOptions
from mailflow.store import StoreRunner, create_engines
from mailflow.store.engine import sqlite_path
from mailflow.web.app import EmbeddedServer, bind, create_app

log = logging.getLogger(__name__)

MAINTENANCE_CALLS = 50


def build_egress(settings: Settings, child: ChildProcess | None = None) -> Egress:
    """The default egress (``egress``, a name or a URL) and the ``routes`` around it.

    With ``egress_process``, an SMTP default egress is sent by the relay's child process
    (``child``, or one of its own).
    """
    options = ProviderOptions(pool_size=settings.smtp_pool_size, timeout=settings.smtp_timeout,
                              idle_check=settings.smtp_idle_check,
                              local_hostname=settings.hostname,
                              payload_cache=settings.cache_budget.payloads)
    url = settings.egress_url
    provider = parse_provider_url(url)
    default: Egress
    if settings.egress_process and provider.scheme == "smtp" and provider.relay is not None:
        default = ProcessEgress(provider.relay, pool_size=options.pool_size,
                                timeout=options.timeout, idle_check=options.idle_check,
                                local_hostname=options.local_hostname, child=child,
                                name="smtp", payload_cache=options.payload_cache)
    else:
        default = build_provider(url, options)
    return build_routed(default, url, settings.route_specs, options)


@dataclass
class Relay:
    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    egress: Egress | None = None

    def __post_init__(self) -> None:
        self._listeners: list[Listener | HostedListeners] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._http: uvicorn.Server | None = None
        self._policy: asyncio.Server | None = None
        self._lock: IO[str] | None = None
        self.runner: StoreRunner | None = None
        self.scheduler: Scheduler | None = None
        self.child: ChildProcess | None = None
        self.listening: dict[str, str] = {}

    async def start(self) -> None:
        settings = self.settings
        self.instance_id = await asyncio.to_thread(initialise, settings)
        self.runner = runner = StoreRunner(create_engines(settings.resolved_database_url))
        database = sqlite_path(settings.resolved_database_url)
        if database is not None:
            self._lock = _lock_sqlite_store(database)
            # One process per SQLite store: every lease left behind is from a dead process.
            await runner.write(runner.repo.release_leases, self.clock.now())
        budget = settings.cache_budget
        blobs = BlobStore(settings.blob_dir, cache_bytes=budget.recent_contents)
        self.child = child = ChildProcess(log_level=settings.log_level,
                                          contents_cache=budget.child_contents)
        self.egress = egress = self.egress or build_egress(settings, child)
        # Fits deliveries.lease_owner (64 characters) whatever the hostname's length.
        owner = f"{settings.hostname[:40]}:{os.getpid()}:{secrets.token_hex(3)}"
        recent = RecentMessages(max_bytes=budget.recent_messages)
        activity = IngestActivity()
        self.scheduler = scheduler = Scheduler(runner, blobs, egress, self.clock, SchedulerOptions(
            batch_size=settings.scheduler_batch_size,
            max_recipients=settings.max_recipients_per_transaction,
            concurrency=settings.smtp_pool_size, lease=settings.delivery_lease, owner=owner,
            instance_id=self.instance_id, hostname=settings.hostname,
            retry=RetryPolicy(settings.retry_initial_delay, settings.retry_multiplier,
                              settings.retry_max_delay, settings.max_delivery_age),
            poll_interval=settings.poll_interval, cache_bytes=budget.rendered_copies,
            large_in_flight=budget.large_in_flight,
        ), recent=recent, ingest_busy=activity.busy)
        processor = Processor(runner, self.clock, on_queued=scheduler.wake,
                              poll_interval=settings.poll_interval)
        committer = GroupCommitter(runner, blobs, self.clock,
                                   body_limit=settings.max_body_in_database,
                                   expansion=InlineExpansion(settings.max_inline_deliveries),
                                   queue=scheduler, on_received=processor.wake,
                                   recent=recent, activity=activity)
        service = AcceptService(
            store_lookup(runner), committer, self.clock,
            AcceptPolicy(self.instance_id, settings.max_message_size,
                         settings.max_received_headers, settings.recipient_cache_ttl),
        )
        # Bound before anything starts, so that a child the scheduler's first send may
        # start (lazily) serves them too; accepted only once the child starts, last.
        hosted = await self._host_listeners(settings, service, child)
        await scheduler.start()
        self._tasks += [
            asyncio.create_task(processor.run(), name="processor"),
            asyncio.create_task(committer.run(), name="committer"),
            asyncio.create_task(self._maintenance(blobs), name="maintenance"),
        ]
        try:
            await egress.start()
            if child.needed:
                await child.start()
        except Exception as exc:
            await self.stop()
            raise ConfigurationError(f"cannot start the relay's child process: {exc}") \
                from None
        if not hosted:
            await self._start_listeners(settings, service)
        if settings.policy_address is not None:
            try:
                self._policy = await start_policy_service(service, settings.policy_address)
            except OSError as exc:
                await self.stop()
                raise ConfigurationError(f"cannot listen for the policy service on "
                                         f"{settings.policy_address}: {exc.strerror}") from None
            self.listening["policy"] = str(settings.policy_address)
        if settings.http_address is not None:
            await self._start_http(settings, service)
        log.info("relay %s started: %s; egress %s", self.instance_id,
                 ", ".join(f"{k} on {v}" for k, v in self.listening.items()), egress.name,
                 extra={"action": "started"})

    @staticmethod
    def _listen_addresses(settings: Settings) -> list[tuple[str, ListenAddress, bool]]:
        """(name, address, is LMTP) of the SMTP and LMTP listeners that are on."""
        return [(name, address, lmtp) for name, address, lmtp in (
            ("smtp", settings.smtp_address, False), ("lmtp", settings.lmtp_address, True))
            if address is not None]

    async def _host_listeners(self, settings: Settings, service: AcceptService,
                              child: ChildProcess) -> bool:
        """Bind SMTP and LMTP for the child process to serve (``listener_process``),
        whatever the egress.  Returns whether it does; otherwise the listeners run on
        this event loop."""
        addresses = self._listen_addresses(settings)
        if not (addresses and settings.listener_process):
            return False
        sockets: list[tuple[socket.socket, bool]] = []
        for name, address, lmtp in addresses:
            try:
                sockets.append((bind(address.host, address.port), lmtp))
            except OSError as exc:
                for sock, _ in sockets:
                    sock.close()
                await self.stop()
                raise _listen_error(name, address, exc) from None
            self.listening[name] = str(address)
        hosted = HostedListeners(service, sockets, hostname=settings.hostname,
                                 max_message_size=settings.max_message_size,
                                 recipient_cache_ttl=settings.recipient_cache_ttl)
        child.host_listeners(hosted)
        self._listeners.append(hosted)
        return True

    async def _start_listeners(self, settings: Settings, service: AcceptService) -> None:
        for name, address, lmtp in self._listen_addresses(settings):
            try:
                server = await start_listener(service, address, hostname=settings.hostname,
                                              max_message_size=settings.max_message_size,
                                              lmtp=lmtp)
            except OSError as exc:
                await self.stop()
                raise _listen_error(name, address, exc) from None
            self._listeners.append(server)
            self.listening[name] = str(address)

    async def _start_http(self, settings: Settings, service: AcceptService) -> None:
        address = settings.http_address
        assert address is not None and self.runner is not None
        try:
            sock = bind(address.host, address.port)
        except OSError as exc:
            await self.stop()
            raise ConfigurationError(f"cannot listen for HTTP on {address}: {exc.strerror}") \
                from None
        ingress = create_router(
            service, settings.ingress_keys,
            FailedAuthLimiter(settings.http_auth_max_failures, settings.http_auth_window),
            settings.max_message_size)
        config = uvicorn.Config(create_app(self.runner, [ingress]), log_level="warning",
                                lifespan="off", access_log=False)
        self._http = EmbeddedServer(config)
        self._tasks.append(asyncio.create_task(self._http.serve(sockets=[sock]), name="http"))
        self.listening["http"] = str(address)

    async def _maintenance(self, blobs: BlobStore) -> None:
        """Finish messages whose deliveries are all final, then collect what they held."""
        assert self.runner is not None
        repo, settings = self.runner.repo, self.settings
        while True:
            await asyncio.sleep(settings.maintenance_interval)
            try:
                now = self.clock.now()
                # Each call handles up to 1,000 rows; a bounded number of calls per round
                # keeps a huge backlog from monopolising the writer.
                for _ in range(MAINTENANCE_CALLS):
                    if not await self.runner.write(repo.finish_messages, now):
                        break
                for _ in range(MAINTENANCE_CALLS):
                    if not await self.runner.write(repo.collect_blobs,
                                                   now - settings.blob_retention,
                                                   blobs.unlink_many):
                        break
                await self.runner.write(repo.purge_messages, now - settings.message_retention)
            except Exception:
                log.exception("maintenance failed", extra={"action": "maintenance_error"})

    async def stop(self) -> None:
        await asyncio.gather(*(listener.close() for listener in self._listeners))
        self._listeners.clear()
        if self._policy is not None:
            self._policy.close()
            self._policy = None
        if self._http is not None:
            # Let requests in progress get their answer before the committer goes away.
            self._http.should_exit = True
            http_tasks = [t for t in self._tasks if t.get_name() == "http"]
            if http_tasks:
                await asyncio.wait(http_tasks, timeout=5)
        if self.scheduler is not None:
            await self.scheduler.stop()
            self.scheduler = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.egress is not None:
            await self.egress.close()
        if self.child is not None:
            await self.child.stop()
            self.child = None
        if self.runner is not None:
            await asyncio.to_thread(self.runner.close)
            self.runner = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _listen_error(name: str, address: ListenAddress, exc: OSError) -> ConfigurationError:
    return ConfigurationError(f"cannot listen for {name.upper()} on {address}: {exc.strerror}")


def _lock_sqlite_store(database: Path) -> IO[str]:
    """Refuse a second relay process on the same SQLite store (leases assume one)."""
    lock = database.with_name(database.name + ".lock").open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ConfigurationError(f"another relay is already running on {database}; "
                                 "use PostgreSQL to run several") from None
    return lock


async def serve(settings: Settings) -> None:
    """Run a relay until SIGINT or SIGTERM."""
    relay = Relay(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await relay.start()
    print("MailFlow Relay is running: "
          + ", ".join(f"{name.upper()} on {where}" for name, where in relay.listening.items())
          + f"; egress {relay.settings.egress_display}. Ctrl-C stops it.", flush=True)
    try:
        await stop.wait()
    finally:
        log.info("stopping", extra={"action": "stopping"})
        try:
            await relay.stop()
        except Exception:
            log.exception("error while stopping", extra={"action": "stop_error"})
