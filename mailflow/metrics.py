"""Prometheus metrics: the registry and the few counters the relay updates."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

MESSAGES_ACCEPTED = Counter(
    "mailflow_messages_accepted_total", "Messages made durable by an ingress",
    ["protocol"], registry=REGISTRY)
MESSAGES_REJECTED = Counter(
    "mailflow_messages_rejected_total", "Messages or recipients refused at ingress",
    ["code"], registry=REGISTRY)
DELIVERY_ATTEMPTS = Counter(
    "mailflow_delivery_attempts_total", "Delivery attempts by outcome",
    ["outcome"], registry=REGISTRY)
TRANSACTION_SECONDS = Histogram(
    "mailflow_egress_transaction_seconds", "Time to hand one transaction to the egress",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
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
