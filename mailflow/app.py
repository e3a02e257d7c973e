"""Builds a relay from settings, and starts and stops its parts in the right order.

Start: store (migrated) -> pipeline and scheduler -> listeners, so nothing is accepted
before it can be stored and processed.  Stop: listeners first (no new mail), then the
scheduler hands back what it has not sent, then the store closes.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
import os
import secrets
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import uvicorn

from mailflow.backoff import RetryPolicy
from mailflow.blob_stores import open_blob_store
from mailflow.blobs import Blobs
from mailflow.bounce_score import BouncePolicy
from mailflow.child.egress import ProcessEgress
from mailflow.child.listeners import HostedListeners
from mailflow.child.messages import TlsSpec
from mailflow.child.process import ChildProcess
from mailflow.clock import Clock, SystemClock
from mailflow.config import ListenAddress, Settings, parse_provider_url
from mailflow.egress.base import Egress
from mailflow.egress.routes import ProviderOptions, RoutedEgress, build_provider, build_routed
from mailflow.egress.ses_options import SesOptions
from mailflow.egress.token_bucket import PaceFactory
from mailflow.errors import ConfigurationError, InvalidInput
from mailflow.ingress.http import create_router
from mailflow.ingress.limiter import FailedAuthLimiter
from mailflow.ingress.limits import SessionLimits, raise_open_files_limit
from mailflow.ingress.policy import start_policy_service
from mailflow.ingress.smtp import Listener, start_listener
from mailflow.ingress.tls import ServerTls
from mailflow.model import BARE_ROLE, BounceKind, BounceReport, BounceSource, SentCopy
from mailflow.pipeline.chain import process_chain
from mailflow.pipeline.process.commands import ListCommands
from mailflow.services.accept import AcceptPolicy, AcceptService, store_lookup
from mailflow.services.access import AccessService
from mailflow.services.bounce_upkeep import bounce_upkeep
from mailflow.services.commit import GroupCommitter, IngestActivity, InlineExpansion
from mailflow.services.directory import DirectoryService
from mailflow.services.dkim_keys import store_key_book
from mailflow.services.dmarc_policy import DmarcPolicies
from mailflow.services.filter_rules import FilterBook, store_filter_book
from mailflow.services.gauges import QueueGauges
from mailflow.services.installation import list_commands, prepare
from mailflow.services.moderation import ModerationSweep, content_reader
from mailflow.services.notices import FailureNotices
from mailflow.services.processor import Processor
from mailflow.services.readiness import Readiness
from mailflow.services.recent import RecentMessages
from mailflow.services.rosters import StoreRoster
from mailflow.services.scheduler import Scheduler, SchedulerOptions
from mailflow.services.send_pace import shared_pace
from mailflow.services.sender_rules import SenderRuleBook, store_rule_book
from mailflow.services.subscriptions import Subscriptions
from mailflow.srs import Srs
from mailflow.store import StoreRunner, create_engines
from mailflow.store.access import AccessRepository
from mailflow.store.engine import sqlite_path
from mailflow.store.notify import QueueNotifications
from mailflow.unsubscribe_tokens import UnsubscribeTokens
from mailflow.verp import Verp
from mailflow.web.api.deps import ApiDeps
from mailflow.web.app import (
    EmbeddedServer,
    ManagementOnFirstUse,
    bind,
    create_app,
    head_deadline_protocol,
)
from mailflow.web.public_pages import style_router
from mailflow.web.subscribe import create_router as subscribe_router
from mailflow.web.ui.deps import UiOptions
from mailflow.web.unsubscribe import create_router as unsubscribe_router

if TYPE_CHECKING:  # the Amazon SES ingress (boto3, httpx, cryptography): imported if used
    from mailflow.ingress.aws import AwsClients
    from mailflow.ingress.ses import FeedbackHandler, SesNotifications
    from mailflow.ingress.sns import SnsHttp
    from mailflow.ingress.sqs import SqsPoller

log = logging.getLogger(__name__)

MAINTENANCE_CALLS = 50
RECLAIM_PAGES = 25_000  # ~100 MB of a SQLite file given back per maintenance round


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


def build_egress(settings: Settings, child: ChildProcess | None = None,
                 pace: PaceFactory | None = None) -> Egress:
    """The default egress (``egress``, a name or a URL) and the ``routes`` around it.

    With ``egress_process``, an SMTP default egress is sent by the relay's child process
    (``child``, or one of its own).  ``pace``: what keeps a provider's send rate (None:
    each process its own token bucket).
    """
    options = ProviderOptions(pool_size=settings.smtp_pool_size, timeout=settings.smtp_timeout,
                              idle_check=settings.smtp_idle_check,
                              local_hostname=settings.hostname,
                              transaction_timeout=settings.smtp_transaction_timeout,
                              payload_cache=settings.cache_budget.payloads,
                              ses=ses_options(settings, pace))
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


def ses_options(settings: Settings, pace: PaceFactory | None = None) -> SesOptions:
    """The Amazon SES egress's ``ses_*`` settings."""
    return SesOptions(configuration_set=settings.ses_configuration_set,
                      max_send_rate=settings.ses_max_send_rate,
                      timeout=settings.ses_timeout, concurrency=settings.ses_concurrency,
                      feedback_forwarding=settings.ses_feedback_forwarding,
                      payload_cache=settings.cache_budget.payloads, pace=pace)


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
    # Applies SES Bounce/Complaint/Delivery notifications that arrive with received mail.
    ses_feedback: FeedbackHandler | None = None

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
        self._aws: AwsClients | None = None
        self._sns_http: SnsHttp | None = None
        self._pollers: list[tuple[SqsPoller, asyncio.Task[None]]] = []
        self.blobs: Blobs | None = None
        self.commands: ListCommands | None = None  # the list commands step, as built
        self._bounce_policy = BouncePolicy(self.settings.bounce_score_reset,
                                           self.settings.bounce_warnings,
                                           self.settings.bounce_warning_interval)
        self._routes = self.settings.route_specs  # as last applied (SIGHUP may change them)

    async def start(self) -> None:
        settings = self.settings
        # Before the child starts, which inherits it (and raises its own as well).
        raise_open_files_limit()
        tls_files = settings.tls_files
        if tls_files is not None and settings.takes_mail:  # a bad one stops the start here
            cert_file, key_file = (path.absolute() for path in tls_files)
            self.tls = await ServerTls.load(cert_file, key_file,
                                            require=settings.smtp_require_tls)
            log.info("STARTTLS on SMTP with the certificate %s (SHA-256 %s)%s", cert_file,
                     self.tls.fingerprint, "; required before MAIL" if self.tls.require else "",
                     extra={"action": "tls_loaded"})
        self.instance_id, srs, unsubscribe = await asyncio.to_thread(prepare, settings)
        verp = Verp(srs.secret)  # its own key is derived from the SRS secret
        self.runner = runner = StoreRunner(create_engines(settings.resolved_database_url),
                                           roles=settings.role_addresses, verp=verp)
        database = sqlite_path(settings.resolved_database_url)
        if database is not None:
            self._lock = _lock_sqlite_store(database)
            # One process per SQLite store: every lease left behind is from a dead process.
            await runner.write(runner.repo.release_leases, self.clock.now())
        budget = settings.cache_budget
        self.blobs = blobs = open_blob_store(settings.blob_url, settings.blob_dir,
                                             budget.recent_contents)
        if settings.role == "web":
            await self._start_web(settings, unsubscribe)
            return
        self._tasks.append(asyncio.create_task(self._warm_blobs(blobs), name="warm blobs"))
        self.child = child = ChildProcess(log_level=settings.log_level,
                                          log_format=settings.log_format,
                                          contents_cache=budget.child_contents)
        recent = RecentMessages(max_bytes=budget.recent_messages)
        activity = IngestActivity()
        scheduler = None
        if settings.sends_mail:
            # On PostgreSQL a provider's send rate is kept by every relay together.
            pace = None if runner.engines.is_sqlite else shared_pace(runner)
            self.egress = self.egress or build_egress(settings, child, pace)
            self.scheduler = scheduler = self._scheduler(settings, runner, blobs, srs, verp,
                                                         unsubscribe, recent, activity)
        self.commands = commands = list_commands(settings, unsubscribe)
        chain = process_chain(commands)
        processor = Processor(runner, self.clock,
                              on_queued=scheduler.wake if scheduler else _nobody,
                              poll_interval=settings.poll_interval, read_file=blobs.read,
                              steps=chain)
        committer = GroupCommitter(runner, blobs, self.clock,
                                   body_limit=settings.max_body_in_database,
                                   expansion=InlineExpansion(settings.max_inline_deliveries,
                                                             chain),
                                   queue=scheduler, on_received=processor.wake,
                                   recent=recent, activity=activity)
        notices = FailureNotices(committer, self.clock, srs, settings.hostname,
                                 settings.dsn_per_sender_per_hour)
        # The sender entries' cache: a directory service in this process (the REST API
        # to come) passes ``invalidate`` as its ``on_rules_changed``.
        self.sender_rules = store_rule_book(runner, self.clock, settings.recipient_cache_ttl)
        self.filter_rules = store_filter_book(runner, self.clock, settings.recipient_cache_ttl)
        if scheduler is not None:
            scheduler.on_failed = notices.report
            scheduler.filters = self.filter_rules  # tag and strip rules change the copies
            scheduler.signer = store_key_book(runner, self.clock,
                                              settings.recipient_cache_ttl).signer
        service = AcceptService(
            store_lookup(runner), committer, self.clock,
            AcceptPolicy(self.instance_id, settings.max_message_size,
                         settings.max_received_headers, settings.recipient_cache_ttl,
                         settings.filter_regex_timeout),
            rules=self.sender_rules, filters=self.filter_rules, srs=srs,
            roster=StoreRoster(runner),
        )
        # Bound before anything starts, so that a child the scheduler's first send may
        # start (lazily) serves them too; accepted only once the child starts, last.
        hosted = settings.takes_mail and await self._host_listeners(settings, service, child)
        self._tasks += [
            asyncio.create_task(processor.run(), name="processor"),
            asyncio.create_task(committer.run(), name="committer"),
            asyncio.create_task(notices.run(), name="failure notices"),
        ]
        if scheduler is not None:
            await scheduler.start()
            if not runner.engines.is_sqlite:  # wake-ups by the other relays' commits
                notifications = QueueNotifications(settings.resolved_database_url,
                                                   scheduler.wake)
                scheduler.listening = lambda: notifications.listening
                self._tasks.append(asyncio.create_task(notifications.run(), name="listen"))
            self._tasks += [
                asyncio.create_task(ModerationSweep(
                    runner, self.clock, content_reader(runner.repo, blobs.read),
                    settings.moderation_interval, on_queued=scheduler.wake,
                    public_url=settings.public_url).run(),
                    name="moderation"),
                asyncio.create_task(self._maintenance(blobs), name="maintenance"),
            ]
        try:
            if self.egress is not None:
                await self.egress.start()
            if child.needed:
                await child.start()
        except ConfigurationError:  # an egress that cannot work as configured says why
            await self.stop()
            raise
        except Exception as exc:
            await self.stop()
            raise ConfigurationError(f"cannot start the relay's child process: {exc}") \
                from None
        if settings.takes_mail:
            await self._start_ingress(settings, service, unsubscribe, hosted)
        elif settings.http_address is not None:  # a worker: its health and its metrics
            await self._start_http(settings, None, unsubscribe, None)
        log.info("relay %s started (role %s): %s; egress %s", self.instance_id, settings.role,
                 ", ".join(f"{k} on {v}" for k, v in self.listening.items()) or "no listener",
                 self.egress.name if self.egress is not None else "none",
                 extra={"action": "started"})
        _log_roles(settings)

    def _scheduler(self, settings: Settings, runner: StoreRunner, blobs: Blobs, srs: Srs,
                   verp: Verp, unsubscribe: UnsubscribeTokens, recent: RecentMessages,
                   activity: IngestActivity) -> Scheduler:
        assert self.egress is not None
        # Fits deliveries.lease_owner (64 characters) whatever the hostname's length, with
        # room for the number the scheduler gives each claim's lease token (``owner/n``).
        owner = f"{settings.hostname[:32]}:{os.getpid()}:{secrets.token_hex(3)}"
        budget = settings.cache_budget
        return Scheduler(runner, blobs, self.egress, self.clock, SchedulerOptions(
            batch_size=settings.scheduler_batch_size,
            max_recipients=settings.max_recipients_per_transaction,
            concurrency=settings.smtp_pool_size, lease=settings.delivery_lease, owner=owner,
            instance_id=self.instance_id, hostname=settings.hostname,
            retry=RetryPolicy(settings.retry_initial_delay, settings.retry_multiplier,
                              settings.retry_max_delay, settings.max_delivery_age),
            poll_interval=settings.poll_interval,
            notify_poll_interval=settings.notify_poll_interval,
            transaction_timeout=settings.smtp_transaction_timeout, srs=srs, verp=verp,
            dmarc=DmarcPolicies(settings.dns_resolver, settings.dns_timeout),
            dmarc_author_field=settings.dmarc_author_field,
            cache_bytes=budget.rendered_copies, large_in_flight=budget.large_in_flight,
            public_url=settings.public_url, unsubscribe=unsubscribe,
            filter_regex_timeout=settings.filter_regex_timeout,
        ), recent=recent, ingest_busy=activity.busy)

    @staticmethod
    async def _warm_blobs(blobs: Blobs) -> None:
        """Ask the blob store once at start, in the background: an S3 client's first
        request loads its models and opens its connection (about a second of CPU), which
        the first body read would otherwise wait for; and a store that does not answer
        is in the log from the start."""
        problem = await asyncio.to_thread(blobs.problem)
        if problem is not None:
            log.warning("blob store: %s", problem, extra={"action": "blob_store_error"})

    async def _start_web(self, settings: Settings, unsubscribe: UnsubscribeTokens) -> None:
        """Role web: the API, the web UI, unsubscribe links, health and metrics."""
        if settings.http_address is None:
            await self.stop()
            raise ConfigurationError("role web serves HTTP only, and http_listen is off")
        await self._start_http(settings, None, unsubscribe, None)
        log.info("relay %s started (role web): http on %s", self.instance_id,
                 self.listening.get("http"), extra={"action": "started"})

    async def _start_ingress(self, settings: Settings, service: AcceptService,
                             unsubscribe: UnsubscribeTokens, hosted: bool) -> None:
        """Roles all and ingress: SMTP/LMTP, the policy service, SES/SNS/SQS, HTTP."""
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
        ses = None
        if settings.sns_topics or settings.sqs_queues:
            if self.ses_feedback is None:
                self.ses_feedback = self._ses_feedback()
            ses = await self._ses_notifications(settings, service)
        if settings.http_address is not None:
            await self._start_http(settings, service, unsubscribe, ses)
        if ses is not None:
            self._start_pollers(settings, ses)

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

    async def _ses_notifications(self, settings: Settings, service: AcceptService
                                 ) -> SesNotifications:
        """The Amazon SES ingress's handling of notifications (docs/aws.md)."""
        assert self.runner is not None
        from mailflow.ingress.aws import AwsClients
        from mailflow.ingress.ses import SesIngest, SesIngestOptions, SesNotifications

        self._aws = aws = await AwsClients.create(settings.aws_timeout, settings.sqs_wait_time,
                                                  threads=len(settings.sqs_queues) + 8)
        ingest = SesIngest(service, self.runner, aws, self.clock, SesIngestOptions(
            max_message_size=settings.max_message_size,
            fetch_attempts=settings.s3_fetch_attempts, fetch_delay=settings.s3_fetch_delay,
            refuse_virus=settings.ses_refuse_virus, audit=settings.s3_audit,
            delete_blocked=settings.s3_audit_delete_blocked))
        return SesNotifications(ingest, self.ses_feedback)

    def _ses_feedback(self) -> FeedbackHandler:
        """SES's Bounce, Complaint and Delivery notifications applied to the deliveries
        they name; a permanent bounce or a complaint about a list's copy also counts
        against the member (bounce score, or unsubscribed and suppressed)."""
        runner, clock = self.runner, self.clock
        assert runner is not None

        def counting(kind: BounceKind, source: BounceSource
                     ) -> Callable[[Sequence[SentCopy]], Awaitable[None]]:
            async def count(copies: Sequence[SentCopy]) -> None:
                reports = [BounceReport(c.list_id, c.recipient, kind, source,
                                        "Amazon SES notification") for c in copies]
                if reports:
                    await runner.write(runner.repo.count_bounces, reports, clock.now())
            return count

        from mailflow.services.ses_feedback import SesFeedback

        feedback = SesFeedback(runner, clock,
                               on_bounce=counting(BounceKind.PERMANENT, BounceSource.DSN),
                               on_complaint=counting(BounceKind.COMPLAINT, BounceSource.ARF))

        async def handle(notification: Mapping[str, Any]) -> None:
            try:
                await feedback.handle(notification)
            except InvalidInput as exc:  # acknowledged: a redelivery would fail again
                log.warning("SES notification dropped: %s", exc,
                            extra={"action": "ses_feedback_invalid"})
        return handle

    def _start_pollers(self, settings: Settings, ses: SesNotifications) -> None:
        from mailflow.ingress.sqs import SqsPoller

        assert self._aws is not None
        for url in settings.sqs_queues:
            poller = SqsPoller(self._aws, url, ses, wait=settings.sqs_wait_time,
                               visibility=settings.sqs_visibility_timeout,
                               topics=frozenset(settings.sns_topics))
            self._pollers.append((poller, asyncio.create_task(poller.run(), name="sqs")))
        if settings.sqs_queues:
            self.listening["sqs"] = f"{len(settings.sqs_queues)} queue(s)"

    async def _stop_pollers(self) -> None:
        """No new polls; the notifications in hand get STOP_GRACE seconds to finish
        (one cut short is not deleted, so SQS delivers it again)."""
        for poller, _ in self._pollers:
            poller.stop()
        tasks = [task for _, task in self._pollers]
        if tasks:
            from mailflow.ingress.sqs import STOP_GRACE

            _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._pollers.clear()

    async def _start_http(self, settings: Settings, service: AcceptService | None,
                          unsubscribe: UnsubscribeTokens, ses: SesNotifications | None
                          ) -> None:
        """The HTTP app of the role: mail ingress (``POST /v1/email``, SNS) for all and
        ingress, the API, web UI and unsubscribe links for all and web; health and
        metrics for each (a worker's counters are its own: Prometheus scrapes each)."""
        address = settings.http_address
        assert address is not None and self.runner is not None
        try:
            sock = bind(address.host, address.port)
        except OSError as exc:
            await self.stop()
            raise ConfigurationError(f"cannot listen for HTTP on {address}: {exc.strerror}") \
                from None
        routers = []
        if service is not None:
            routers.append(create_router(
                service, settings.ingress_keys,
                FailedAuthLimiter(settings.http_auth_max_failures, settings.http_auth_window),
                settings.max_message_size, settings.http_request_timeout))
        if ses is not None and settings.sns_topics:
            from mailflow.ingress.sns import SnsHttp, create_sns_router
            from mailflow.ingress.sns_signature import SnsVerifier

            self._sns_http = sns_http = SnsHttp(settings.aws_timeout)
            verifier = SnsVerifier(settings.sns_topics, settings.sns_cert_url_pattern,
                                   self.clock, sns_http.fetch_cert)
            routers.append(create_sns_router(verifier, ses, sns_http,
                                             settings.http_request_timeout))
        # uvicorn trusts X-Forwarded-For from 127.0.0.1 unless told otherwise (and reads
        # FORWARDED_ALLOW_IPS from the environment): only the configured proxies, if any.
        proxies = list(settings.forwarded_allow_ips)
        if settings.serves_web:
            routers.append(unsubscribe_router(self.runner, unsubscribe,
                                              settings.http_request_timeout))
            if self.commands is None:  # role web: the commands step only for the pages
                self.commands = list_commands(settings, unsubscribe)
            routers.append(subscribe_router(
                self.runner, Subscriptions(self.runner.repo, self.clock, self.commands),
                FailedAuthLimiter(settings.subscribe_posts_per_hour, 3600.0),
                settings.http_request_timeout,
                self.scheduler.wake if self.scheduler is not None else _nobody))
            routers.append(style_router())
        # Readiness checks what the role needs: the store always, the blob store where
        # mail is taken or sent, the next hop where it is sent.
        provider = parse_provider_url(settings.egress_url)
        readiness = Readiness(self.runner, self.blobs if settings.role != "web" else None,
                              provider.relay, sends=settings.sends_mail)
        gauges = QueueGauges(self.runner, self.clock, busy=self.scheduler.busy_connections
                             if self.scheduler is not None else None)
        make_app = functools.partial(
            create_app, self.runner, routers, readiness=readiness, gauges=gauges,
            api=self._api_deps(settings) if settings.serves_web else None,
            ui=UiOptions(session_lifetime=settings.ui_session_lifetime),
            monitoring_access=settings.monitoring_access)
        app = ManagementOnFirstUse(make_app(management=False), make_app) \
            if settings.serves_web else make_app()
        config = uvicorn.Config(app, log_level="warning",
                                lifespan="off", access_log=False, proxy_headers=bool(proxies),
                                forwarded_allow_ips=proxies,
                                http=head_deadline_protocol(settings.http_request_timeout,
                                                            settings.http_max_connections))
        self._http = EmbeddedServer(config)
        self._tasks.append(asyncio.create_task(self._http.serve(sockets=[sock]), name="http"))
        self.listening["http"] = str(address)

    async def reload(self, reload_settings: Callable[[], Settings] | None) -> None:
        """SIGHUP: what can change while the relay runs (the TLS certificate, the log
        level) is read again; the rest needs a restart."""
        if reload_settings is not None:
            try:
                fresh = await asyncio.to_thread(reload_settings)
            except Exception as exc:  # a broken file keeps every current setting
                log.error("SIGHUP: settings not reloaded, the current ones stay: %s", exc,
                          extra={"action": "reload_failed"})
            else:
                if fresh.log_level != logging.getLevelName(logging.getLogger().level):
                    logging.getLogger().setLevel(fresh.log_level)
                    log.warning("SIGHUP: log level now %s", fresh.log_level,
                                extra={"action": "log_level"})
                self._reload_routes(fresh)
        await self.reload_tls()

    def _reload_routes(self, fresh: Settings) -> None:
        """New ``routes`` among the providers the relay runs apply at once; a new
        provider (or a relay started without routes) needs a restart."""
        specs = fresh.route_specs
        if specs == self._routes:
            return
        egress = self.egress
        if not isinstance(egress, RoutedEgress) or fresh.egress_url != self.settings.egress_url:
            log.error("SIGHUP: routes changed but not reloaded: the relay started %s; restart "
                      "it to apply them", "without routes" if not isinstance(
                          egress, RoutedEgress) else "with another default egress",
                      extra={"action": "reload_failed"})
            return
        missing = egress.remap(specs)
        if missing:
            log.error("SIGHUP: routes not reloaded, they name providers this relay does not "
                      "run (%s); restart it to apply them", ", ".join(missing),
                      extra={"action": "reload_failed"})
            return
        self._routes = specs
        log.warning("SIGHUP: routes reloaded: %s", ", ".join(
            f"{s.domain} -> {parse_provider_url(s.url).display}" for s in specs) or "none",
            extra={"action": "routes_reloaded"})
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
                                       settings.http_auth_window),
            body_timeout=settings.http_request_timeout,
            read_blob=None if self.blobs is None else self.blobs.read,
            commands=self.commands)

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

    async def _maintenance(self, blobs: Blobs) -> None:
        """Finish messages whose deliveries are all final, collect what they held, forget
        them after ``message_retention`` and give the space back."""
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
                for _ in range(MAINTENANCE_CALLS):
                    if not await self.runner.write(repo.purge_messages,
                                                   now - settings.message_retention):
                        break
                await self.runner.write(repo.purge_ses_outcomes,
                                        now - settings.message_retention)
                await self.runner.write(repo.reclaim_space, RECLAIM_PAGES)
                await self._bounce_upkeep(now)
            except Exception:
                log.exception("maintenance failed", extra={"action": "maintenance_error"})

    async def _bounce_upkeep(self, now: float) -> None:
        """Warnings, removals and score resets owed to members (bounce processing)."""
        assert self.runner is not None
        settings, policy = self.settings, self._bounce_policy
        for _ in range(MAINTENANCE_CALLS):
            written = await self.runner.write(bounce_upkeep, self.runner.repo, now, policy,
                                              settings.postmaster_address)
            if written and self.scheduler is not None:
                self.scheduler.wake()
            if not written:
                break

    async def stop(self) -> None:
        await self._stop_pollers()
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
        if self._sns_http is not None:
            await self._sns_http.close()
            self._sns_http = None
        if self._aws is not None:
            self._aws.close()
            self._aws = None
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


def _nobody() -> None:
    """Where new work is announced when this process sends none (role ingress): the
    commit's NOTIFY tells the workers."""


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


async def serve(settings: Settings,
                reload_settings: Callable[[], Settings] | None = None) -> None:
    """Run a relay until SIGINT or SIGTERM (which hand every lease back before the exit);
    SIGHUP reloads the TLS certificate and, read again with ``reload_settings``, the
    log level."""
    relay = Relay(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def reload() -> None:
        task = loop.create_task(relay.reload(reload_settings), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    await relay.start()
    role = relay.settings.role
    print("MailFlow Relay is running"
          + ("" if role == "all" else f" (role {role})") + ": "
          + (", ".join(f"{name.upper()} on {where}" for name, where in relay.listening.items())
             or "no listener")
          + ("; egress " + relay.settings.egress_display if relay.settings.sends_mail else "")
          + ". Ctrl-C stops it.", flush=True)
    try:
        await stop.wait()
    finally:
        log.info("stopping", extra={"action": "stopping"})
        try:
            await relay.stop()
        except Exception:
            log.exception("error while stopping", extra={"action": "stop_error"})
