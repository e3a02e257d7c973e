"""Prometheus metrics: the registry, the counters and histograms the relay updates where
things happen, and the process collectors.

Names follow Prometheus' conventions (``_total`` counters, base units: seconds, bytes).
Gauges about the queue are read from the store when scraped (``services/gauges.py``),
not kept up to date on the mail path.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
)

REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

MESSAGES_ACCEPTED = Counter(
    "mailflow_messages_received_total", "Messages made durable by an ingress (250 sent)",
    ["protocol"], registry=REGISTRY)
MESSAGES_REJECTED = Counter(
    "mailflow_messages_rejected_total",
    "Messages or recipients refused at ingress, by enhanced status and error key",
    ["code", "reason"], registry=REGISTRY)
SENDERS_BLOCKED = Counter(
    "mailflow_blocked_total", "Messages or recipients refused by a sender block entry",
    registry=REGISTRY)
DELIVERY_ATTEMPTS = Counter(
    "mailflow_delivery_attempts_total",
    "Delivery attempts by outcome (delivered, deferred, failed)", ["outcome"],
    registry=REGISTRY)
FORWARDS = Counter(
    "mailflow_forwards_total", "Copies an alias forwarded and the next hop accepted",
    registry=REGISTRY)
BOUNCES = Counter(
    "mailflow_bounces_total", "Bounces received for a list or relayed to an original sender",
    registry=REGISTRY)
AUTOREPLIES = Counter(
    "mailflow_autoreplies_total", "Auto-replies and echo answers written", registry=REGISTRY)
LIST_COMMANDS = Counter(
    "mailflow_list_commands_total",
    "Mail to a list's robot addresses handled (join, leave, request: answered or ignored)",
    registry=REGISTRY)
OWNER_FORWARDS = Counter(
    "mailflow_owner_forwards_total",
    "Mail forwarded to a list's owners (LIST-owner@, unrecognized bounces)",
    registry=REGISTRY)
LEASES_LOST = Counter(
    "mailflow_leases_lost_total",
    "Deliveries whose lease this relay lost: not sent (stage=waiting), or sent and their "
    "outcome not applied (stage=outcome)",
    ["stage"], registry=REGISTRY)
SES_RECEIVED = Counter(
    "mailflow_ses_received_total",
    "SES received-mail notifications by outcome (delivered, blocked, rejected, duplicate)",
    ["status"], registry=REGISTRY)
SNS_REFUSED = Counter(
    "mailflow_sns_refused_total",
    "SNS webhook messages refused: forged or unsigned signature, wrong certificate URL, "
    "topic not allowed, stale timestamp", ["reason"], registry=REGISTRY)

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
ACCEPT_SECONDS = Histogram(
    "mailflow_accept_seconds",
    "From the end of a message's data to its durable commit (what the client waits for)",
    buckets=_FAST, registry=REGISTRY)
TRANSACTION_SECONDS = Histogram(
    "mailflow_egress_transaction_seconds",
    "Time to hand one transaction to the egress and get its replies, by route",
    ["route"], buckets=_FAST, registry=REGISTRY)
QUEUE_SECONDS = Histogram(
    "mailflow_delivery_queue_seconds",
    "From a message's arrival to the end of a transaction that delivered its copies",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400),
    registry=REGISTRY)

# Event kinds of the trace that have a counter of their own (see ``count_events``).
_EVENT_COUNTERS = {"bounce": BOUNCES, "replied": AUTOREPLIES, "command": LIST_COMMANDS,
                   "owner": OWNER_FORWARDS}


def count_events(kinds: Iterable[str]) -> None:
    """Count the committed trace events that have a counter (bounces, auto-replies)."""
    for kind in kinds:
        counter = _EVENT_COUNTERS.get(kind)
        if counter is not None:
            counter.inc()
