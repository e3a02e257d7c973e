"""Routes: recipient domains sent to their own egress provider, the default taking the rest.

Typical use is internal versus external routing: mail for our own mailbox server's domains
goes by LMTP (or SMTP) to an internal port, everything else to the default egress::

    MAILFLOW_ROUTES="internal.example=lmtp://127.0.0.1:24,*.corp.example=smtp://10.0.0.5:2525"

A recipient's domain is matched exactly first; else the longest ``*.`` suffix that matches
wins (``*.corp.example`` matches ``a.corp.example``, not ``corp.example`` itself); else the
default egress takes it.  Routes naming the same URL share one provider, and a route whose
URL is the default egress's is the default.

Every provider is a *lane* with its own connection pool; the scheduler gives each lane its
own ready queue and senders (:mod:`mailflow.services.lanes`), so a slow or dead route never
holds up another.  :class:`RoutedEgress` is still an ordinary
:class:`~mailflow.egress.base.Egress` for callers that do not know about lanes: ``send``
splits the recipients by route.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from mailflow.config import RouteSpec, parse_provider_url
from mailflow.egress.base import Egress, RecipientReply
from mailflow.egress.lmtp import LmtpEgress
from mailflow.egress.ses_options import SesOptions
from mailflow.egress.smtp import SmtpEgress
from mailflow.egress.stdout import StdoutEgress
from mailflow.errors import SmtpReplyError, recipient_reply
from mailflow.memory import DEFAULT_BUDGET

DEFAULT_LANE = 0


@dataclass(frozen=True, slots=True)
class ProviderOptions:
    """What every pooled provider is built with (``smtp_pool_size``, ``smtp_timeout`` …;
    ``payload_cache``: each provider's share of ``cache_memory``)."""

    pool_size: int
    timeout: float
    idle_check: float
    local_hostname: str | None = None
    transaction_timeout: float = 600.0
    payload_cache: int = DEFAULT_BUDGET.payloads
    ses: SesOptions | None = None  # the ``ses_*`` settings, for ``ses:``


def build_provider(url: str, options: ProviderOptions) -> Egress:
    """The egress a URL names: ``stdout:``, ``smtp://``, ``smtps://``, ``lmtp://`` or
    ``ses:``.

    A new provider is one more branch here and one scheme in
    :func:`mailflow.config.parse_provider_url`.
    """
    provider = parse_provider_url(url)
    if provider.scheme == "stdout":
        return StdoutEgress()
    if provider.scheme == "ses":
        # Imported here: boto3 costs every relay start time and memory, and most
        # relays never send through SES.
        from mailflow.egress.ses import SesEgress

        return SesEgress(options.ses or SesOptions(payload_cache=options.payload_cache))
    assert provider.relay is not None  # every other scheme names a next hop
    kind = LmtpEgress if provider.scheme == "lmtp" else SmtpEgress
    return kind(provider.relay, pool_size=options.pool_size, timeout=options.timeout,
                idle_check=options.idle_check, local_hostname=options.local_hostname,
                transaction_timeout=options.transaction_timeout,
                payload_cache=options.payload_cache)


class RouteTable:
    """Recipient domain -> lane index: exact domains, then the longest ``*.`` suffix."""

    def __init__(self, routes: Sequence[tuple[str, int]]) -> None:
        self._exact: dict[str, int] = {}
        self._wildcard: dict[str, int] = {}
        for domain, lane in routes:
            domain = domain.lower()
            if domain.startswith("*."):
                self._wildcard[domain[2:]] = lane
            else:
                self._exact[domain] = lane

    def lane_of(self, recipient: str) -> int:
        domain = recipient.rpartition("@")[2].lower()
        lane = self._exact.get(domain)
        if lane is not None:
            return lane
        wildcard = self._wildcard
        if wildcard:
            # Parents from the closest up: the first that matches is the longest suffix.
            _, dot, parent = domain.partition(".")
            while dot:
                lane = wildcard.get(parent)
                if lane is not None:
                    return lane
                _, dot, parent = parent.partition(".")
        return DEFAULT_LANE


@dataclass(frozen=True, slots=True)
class Lane:
    """One provider and how many transactions it may have in flight (its pool size)."""

    name: str  # the URL without credentials, for logs
    egress: Egress
    concurrency: int


class RoutedEgress:
    """The default egress plus the routed ones, as lanes the scheduler serves apart."""

    def __init__(self, default: Egress, routes: Sequence[tuple[RouteSpec, Egress]], *,
                 concurrency: int, default_url: str) -> None:
        self.lanes: list[Lane] = [Lane(_display(default_url), default, concurrency)]
        self._by_url: dict[str, int] = {default_url: DEFAULT_LANE}
        table: list[tuple[str, int]] = []
        for spec, egress in routes:
            index = self._by_url.get(spec.url)
            if index is None:
                index = self._by_url[spec.url] = len(self.lanes)
                self.lanes.append(Lane(_display(spec.url), egress, concurrency))
            table.append((spec.domain, index))
        self.table = RouteTable(table)
        self.name = f"{default.name} +{len(self.lanes) - 1} route(s)"

    def remap(self, specs: Sequence[RouteSpec]) -> list[str]:
        """Send the domains of ``specs`` to the providers they name from now on, if this
        egress runs every one of them (SIGHUP); else change nothing and return the
        providers it lacks (adding one needs a restart: a lane has senders of its own).
        Transactions already grouped keep their lane."""
        missing = sorted({_display(s.url) for s in specs if s.url not in self._by_url})
        if not missing:
            self.table = RouteTable([(s.domain, self._by_url[s.url]) for s in specs])
        return missing

    def lane_of(self, recipient: str) -> int:
        return self.table.lane_of(recipient)

    async def start(self) -> None:
        for lane in self.lanes:
            await lane.egress.start()

    async def send(self, mail_from: str, recipients: Sequence[str],
                   content: bytes) -> list[RecipientReply]:
        """Each route's share to its provider, at once; one answer per recipient.

        A provider that fails as a whole (an unreachable next hop) answers for its own
        recipients only, with its error's reply: the others may have been delivered.
        """
        groups: dict[int, list[str]] = {}
        for recipient in recipients:
            groups.setdefault(self.lane_of(recipient), []).append(recipient)
        answers = await asyncio.gather(*(
            self.lanes[lane].egress.send(mail_from, group, content)
            for lane, group in groups.items()), return_exceptions=True)
        by_recipient: dict[str, RecipientReply] = {}
        for group, answer in zip(groups.values(), answers, strict=True):
            if isinstance(answer, SmtpReplyError):
                code, text = recipient_reply(answer)
                answer = [RecipientReply(r, code, text) for r in group]
            elif isinstance(answer, BaseException):
                raise answer
            by_recipient.update((reply.recipient, reply) for reply in answer)
        return [by_recipient[r] for r in recipients]

    async def close(self) -> None:
        for lane in self.lanes:
            await lane.egress.close()


def build_routed(default: Egress, default_url: str, specs: Sequence[RouteSpec],
                 options: ProviderOptions) -> Egress:
    """``default`` alone without routes; else a :class:`RoutedEgress` over all of them.

    Routes naming the same URL share one provider (one pool).
    """
    if not specs:
        return default
    built: dict[str, Egress] = {}
    routes = []
    for spec in specs:
        if spec.url != default_url and spec.url not in built:
            built[spec.url] = build_provider(spec.url, options)
        routes.append((spec, built.get(spec.url, default)))
    return RoutedEgress(default, routes, concurrency=options.pool_size,
                        default_url=default_url)


def _display(url: str) -> str:
    return parse_provider_url(url).display
