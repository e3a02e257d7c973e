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
from mailflow.child.messages import TlsSpec
from mailflow.child.process import ChildProcess
from mailflow.clock import Clock, SystemClock
from mailflow.config import ListenAddress, Settings, parse_provider_url
from mailflow.egress.base import Egress
from mailflow.egress.routes import ProviderOptions, build_provider, build_routed
from mailflow.errors import ConfigurationError
from mailflow.ingress.http import create_router
from mailflow.ingress.limiter import FailedAuthLimiter
from mailflow.ingress.limits import SessionLimits, raise_open_files_limit
from mailflow.ingress.policy import start_policy_service
from mailflow.ingress.smtp import Listener, start_listener
from mailflow.ingress.tls import ServerTls
from mailflow.model import BARE_ROLE
from mailflow.services.accept import AcceptPolicy, AcceptService, store_lookup
from mailflow.services.access import AccessService
from mailflow.services.commit import GroupCommitter, IngestActivity, InlineExpansion
from mailflow.services.directory import DirectoryService
from mailflow.services.filter_rules import FilterBook, store_filter_book
from mailflow.services.installation import prepare
from mailflow.services.notices import FailureNotices
from mailflow.services.processor import Processor
from mailflow.services.recent import RecentMessages
from mailflow.services.scheduler import Scheduler, SchedulerOptions
from mailflow.services.sender_rules import SenderRuleBook, store_rule_book
from mailflow.store import StoreRunner, create_engines
from mailflow.store.access import AccessRepository
from mailflow.store.engine import sqlite_path
from mailflow.web.api.deps import ApiDeps
from mailflow.web.app import EmbeddedServer, bind, create_app, head_deadline_protocol

log = logging.getLogger(__name__)

MAINTENANCE_CALLS = 50


def _log_roles(settings: Settings) -> None:
    """Say where role mail goes, and warn when RFC 5321's postmaster has nowhere to go."""
    for role, target in settings.role_addresses.items():
        log.info("%s@ of every served domain goes to %s", role, target,
                 extra={"action": "role_alias"})
    if BARE_ROLE not in settings.role_addresses:
        log.warning("postmaster_address is not set: mail to postmaster@ of the served domains "
                    "is refused, though RFC 5321 requires it to be accepted; set "
                    "postmaster_address (MAILFLOW_POSTMASTER_ADDRESS)",
                    extra={"action": "no_postmaster"})


def build_egress(settings: Settings, child: ChildProcess | None = None) -> Egress:
    """The default egress (``egress``, a name or a URL) and the ``routes`` around it.

    With ``egress_process``, an SMTP default egress is sent by the relay's child process
    (``child``, or one of its own).
    """
    options = ProviderOptions(pool_size=settings.smtp_pool_size, timeout=settings.smtp_timeout,
                              idle_check=settings.smtp_idle_check,
                              local_hostname=settings.hostname,
                              transaction_timeout=settings.smtp_transaction_timeout,
                              payload_cache=settings.cache_budget.payloads)
    url = settings.egress_url
    provider = parse_provider_url(url)
    default: Egress
    if settings.egress_process and provider.scheme == "smtp" and provider.relay is not None:
        default = ProcessEgress(provider.relay, pool_size=options.pool_size,
                                timeout=options.timeout, idle_check=options.idle_check,
                                local_hostname=options.local_hostname, child=child,
                                name="smtp", transaction_timeout=options.transaction_timeout,
                                payload_cache=options.payload_cache)
    else:
        default = build_provider(url, options)
    return build_routed(default, url, settings.route_specs, options)


def session_limits(settings: Settings) -> SessionLimits:
    """The bounds of every SMTP/LMTP session (``smtp_max_connections`` …)."""
    return SessionLimits(
        max_connections=settings.smtp_max_connections,
        max_connections_per_client=settings.smtp_max_connections_per_client,
        idle_timeout=settings.smtp_idle_timeout, data_timeout=settings.smtp_data_timeout,
        max_commands=settings.smtp_max_commands,
        max_failed_recipients=settings.smtp_max_failed_recipients)


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
        self.tls: ServerTls | None = None
        self.sender_rules: SenderRuleBook | None = None
        self.filter_rules: FilterBook | None = None
        self.listening: dict[str, str] = {}

    async def start(self) -> None:
        settings = self.settings
        # Before the child starts, which inherits it (and raises its own as well).
        raise_open_files_limit()
        tls_files = settings.tls_files
        if tls_files is not None:  # a certificate that cannot work stops the start here
            cert_file, key_file = (path.absolute() for path in tls_files)
            self.tls = await ServerTls.load(cert_file, key_file,
                                            require=settings.smtp_require_tls)
            log.info("STARTTLS on SMTP with the certificate %s (SHA-256 %s)%s", cert_file,
                     self.tls.fingerprint, "; required before MAIL" if self.tls.require else "",
                     extra={"action": "tls_loaded"})
        self.instance_id, srs = await asyncio.to_thread(prepare, settings)
        self.runner = runner = StoreRunner(create_engines(settings.resolved_database_url),
                                           roles=settings.role_addresses)
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
        # Fits deliveries.lease_owner (64 characters) whatever the hostname's length, with
        # room for the number the scheduler gives each claim's lease token (``owner/n``).
        owner = f"{settings.hostname[:32]}:{os.getpid()}:{secrets.token_hex(3)}"
        recent = RecentMessages(max_bytes=budget.recent_messages)
        activity = IngestActivity()
        self.scheduler = scheduler = Scheduler(runner, blobs, egress, self.clock, SchedulerOptions(
            batch_size=settings.scheduler_batch_size,
            max_recipients=settings.max_recipients_per_transaction,
            concurrency=settings.smtp_pool_size, lease=settings.delivery_lease, owner=owner,
            instance_id=self.instance_id, hostname=settings.hostname,
            retry=RetryPolicy(settings.retry_initial_delay, settings.retry_multiplier,
                              settings.retry_max_delay, settings.max_delivery_age),
            poll_interval=settings.poll_interval,
            transaction_timeout=settings.smtp_transaction_timeout, srs=srs,
            cache_bytes=budget.rendered_copies, large_in_flight=budget.large_in_flight,
        ), recent=recent, ingest_busy=activity.busy)
        processor = Processor(runner, self.clock, on_queued=scheduler.wake,
                              poll_interval=settings.poll_interval, read_file=blobs.read)
        committer = GroupCommitter(runner, blobs, self.clock,
                                   body_limit=settings.max_body_in_database,
                                   expansion=InlineExpansion(settings.max_inline_deliveries),
                                   queue=scheduler, on_received=processor.wake,
                                   recent=recent, activity=activity)
        notices = FailureNotices(committer, self.clock, srs, settings.hostname,
                                 settings.dsn_per_sender_per_hour)
        scheduler.on_failed = notices.report
        # The sender entries' cache: a directory service in this process (the REST API
        # to come) passes ``invalidate`` as its ``on_rules_changed``.
        self.sender_rules = store_rule_book(runner, self.clock, settings.recipient_cache_ttl)
        self.filter_rules = store_filter_book(runner, self.clock, settings.recipient_cache_ttl)
        service = AcceptService(
            store_lookup(runner), committer, self.clock,
            AcceptPolicy(self.instance_id, settings.max_message_size,
                         settings.max_received_headers, settings.recipient_cache_ttl,
                         settings.filter_regex_timeout),
            rules=self.sender_rules, filters=self.filter_rules, srs=srs,
        )
        # Bound before anything starts, so that a child the scheduler's first send may
        # start (lazily) serves them too; accepted only once the child starts, last.
        hosted = await self._host_listeners(settings, service, child)
        await scheduler.start()
        self._tasks += [
            asyncio.create_task(processor.run(), name="processor"),
            asyncio.create_task(committer.run(), name="committer"),
            asyncio.create_task(notices.run(), name="failure notices"),
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
        _log_roles(settings)

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
        tls = None if self.tls is None else TlsSpec(
            str(self.tls.cert_file), str(self.tls.key_file), self.tls.require)
        hosted = HostedListeners(service, sockets, hostname=settings.hostname,
                                 max_message_size=settings.max_message_size,
                                 recipient_cache_ttl=settings.recipient_cache_ttl,
                                 limits=session_limits(settings), tls=tls)
        child.host_listeners(hosted)
        self._listeners.append(hosted)
        return True

    async def _start_listeners(self, settings: Settings, service: AcceptService) -> None:
        for name, address, lmtp in self._listen_addresses(settings):
            try:
                server = await start_listener(service, address, hostname=settings.hostname,
                                              max_message_size=settings.max_message_size,
                                              lmtp=lmtp, limits=session_limits(settings),
                                              tls=None if lmtp else self.tls)
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
            settings.max_message_size, settings.http_request_timeout)
        # uvicorn trusts X-Forwarded-For from 127.0.0.1 unless told otherwise (and reads
        # FORWARDED_ALLOW_IPS from the environment): only the configured proxies, if any.
        proxies = list(settings.forwarded_allow_ips)
        config = uvicorn.Config(create_app(self.runner, [ingress],
                                           api=self._api_deps(settings),
                                           monitoring_access=settings.monitoring_access),
                                log_level="warning",
                                lifespan="off", access_log=False, proxy_headers=bool(proxies),
                                forwarded_allow_ips=proxies,
                                http=head_deadline_protocol(settings.http_request_timeout,
                                                            settings.http_max_connections))
        self._http = EmbeddedServer(config)
        self._tasks.append(asyncio.create_task(self._http.serve(sockets=[sock]), name="http"))
        self.listening["http"] = str(address)

    def _api_deps(self, settings: Settings) -> ApiDeps:
        """The services behind ``/api/v1``; a change of sender entries or filter rules
        made through it empties this process's caches of them at once (the listener
        child's expire within ``recipient_cache_ttl``)."""
        assert self.runner is not None
        loop = asyncio.get_running_loop()

        def forget_rules() -> None:
            for book in (self.sender_rules, self.filter_rules):
                if book is not None:
                    book.invalidate()

        def rules_changed() -> None:  # on a store thread: the caches belong to the loop
            loop.call_soon_threadsafe(forget_rules)

        directory = DirectoryService(self.runner.repo, self.clock,
                                     on_rules_changed=rules_changed)
        return ApiDeps(
            self.runner, directory, AccessService(AccessRepository(self.runner.engines),
                                                  self.clock),
            clients=FailedAuthLimiter(settings.http_auth_max_failures,
                                      settings.http_auth_window),
            accounts=FailedAuthLimiter(settings.http_auth_max_failures,
                                       settings.http_auth_window))

    async def reload_tls(self) -> None:
        """SIGHUP: the SMTP listener reads its certificate files again, for the sessions
        that connect from then on (a renewed certificate needs no restart).  If they do
        not load, the old certificate stays and the log says why."""
        if self.tls is None:
            log.info("SIGHUP: nothing to reload (no tls_cert_file)", extra={"action": "reload"})
            return
        try:
            if self.child is not None and self.child.listeners is not None:
                fingerprint = await self.child.reload_tls()
            else:
                fingerprint = await self.tls.reload()
        except ConfigurationError as exc:
            log.error("TLS certificate not reloaded, the old one stays: %s", exc,
                      extra={"action": "tls_reload_failed"})
            return
        if fingerprint is None:
            log.info("TLS certificate: the child process starting now reads %s",
                     self.tls.cert_file, extra={"action": "tls_reloaded"})
        else:
            log.info("TLS certificate reloaded from %s (SHA-256 %s)", self.tls.cert_file,
                     fingerprint, extra={"action": "tls_reloaded"})

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
    """Run a relay until SIGINT or SIGTERM; SIGHUP reloads the TLS certificate."""
    relay = Relay(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def reload() -> None:
        task = loop.create_task(relay.reload_tls(), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
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
