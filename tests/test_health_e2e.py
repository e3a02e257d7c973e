"""Metrics, logs and health of a running relay, over real HTTP and SMTP: metrics move as
mail flows, the mail log's JSON lines, ``/readyz`` naming the check that fails, and a
clean stop (SIGTERM) that hands every lease back."""

from __future__ import annotations

import json
import re
import shutil
import signal
import smtplib
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailflow.model import ListKind
from mailflow.testing.factories import make_message
from mailflow.testing.ports import free_port
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink

CONTRIB = [Path(__file__).parent.parent / "contrib" / name
           for name in ("grafana/mailflow-dashboard.json", "prometheus/mailflow-alerts.yml")]


def scrape(relay: RelayProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, by name and labels."""
    text = httpx.get(f"http://127.0.0.1:{relay.http_port}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def post(relay: RelayProcess, to: str, *, sender: str = "poster@outside.test") -> None:
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.sendmail(sender, [to], make_message(to))


def test_metrics_move_as_mail_flows_and_the_log_has_one_json_line_per_event(
        make_relay: Callable[..., RelayProcess], sink: SmtpSink) -> None:
    relay = make_relay(log_format="json", poll_interval="0.1").start()
    address, [ann, ben] = relay.fresh_list(members=2)
    alias, [cat] = relay.fresh_list(members=1, kind=ListKind.ALIAS)
    before = scrape(relay)
    sink.fail_rcpt(ann, "451 4.2.0 mailbox busy")
    post(relay, address)
    post(relay, alias)
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        post(relay, "nobody@example.test")
    assert sink.wait_for_copies([ann, ben, cat])
    relay.wait_settled()
    after = scrape(relay)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("mailflow_messages_received_total", protocol="ESMTP") == 2
    assert moved("mailflow_forwards_total") == 1
    assert moved("mailflow_messages_rejected_total", code="5.1.1",
                 reason="unknown_recipient") == 1
    assert moved("mailflow_delivery_attempts_total", outcome="delivered") == 3
    assert moved("mailflow_delivery_attempts_total", outcome="deferred") == 1
    assert moved("mailflow_accept_seconds_count") == 2
    assert moved("mailflow_egress_transaction_seconds_count", route="smtp") >= 3
    assert moved("mailflow_delivery_queue_seconds_count") >= 2
    assert after[("mailflow_deliveries", (("status", "deferred"),))] == 0
    assert after[("mailflow_oldest_due_delivery_age_seconds", ())] == 0
    assert after[("mailflow_blob_store_blobs", ())] >= 0
    assert after[("mailflow_egress_connections", (("route", "smtp"),))] >= 1
    assert ("process_cpu_seconds_total", ()) in after
    # The dashboard and the alert rules in contrib/ use only metrics the relay exports.
    exposed = httpx.get(f"http://127.0.0.1:{relay.http_port}/metrics", timeout=10).text
    exported = set(re.findall(r"^# HELP (mailflow_[a-z_]+)", exposed, re.MULTILINE))
    exported |= {name for name, _ in after}  # with _bucket, _count, _sum
    used = {name for path in CONTRIB for name in re.findall(r"mailflow_[a-z_]+",
                                                            path.read_text())}
    assert used and used <= exported, used - exported

    lines = [json.loads(line) for line in relay.log().splitlines() if line.startswith("{")]
    events = [(e["action"], e.get("recipient")) for e in lines if e.get("queue_id")]
    assert ("received", address) in events
    assert ("expanded", None) in events
    assert ("deferred", ann) in events
    assert ("reject", "nobody@example.test") in [(e["action"], e.get("recipient"))
                                                 for e in lines]
    [deferred] = [e for e in lines if e.get("action") == "deferred"]
    assert deferred["reply"].startswith("451 4.2.0 mailbox busy")
    assert deferred["sender"] == "poster@outside.test"
    assert deferred["message_id"].startswith("<") and deferred["message_id"].endswith(">")
    delivered = {r for e in lines if e.get("action") == "delivered"
                 for r in e["recipient"].split(",")}
    assert delivered == {ann, ben, cat}


def test_readyz_names_the_check_that_fails(make_relay: Callable[..., RelayProcess]) -> None:
    closed = free_port()
    relay = make_relay(smtp_relay=f"smtp://127.0.0.1:{closed}").start()
    ready = httpx.get(f"http://127.0.0.1:{relay.http_port}/readyz", timeout=10)
    assert ready.status_code == 503
    assert ready.headers["content-type"] == "application/problem+json"
    assert ready.json()["failed"] == ["egress"]
    assert f"127.0.0.1:{closed}" in ready.json()["detail"]
    blobs = relay.data_dir / "blobs"
    shutil.move(blobs, relay.data_dir / "elsewhere")
    try:
        ready = httpx.get(f"http://127.0.0.1:{relay.http_port}/readyz", timeout=10)
        assert ready.json()["failed"] == ["blob_store", "egress"]
    finally:
        shutil.move(relay.data_dir / "elsewhere", blobs)


def test_readyz_is_ready_when_everything_answers(relay: RelayProcess) -> None:
    ready = httpx.get(f"http://127.0.0.1:{relay.http_port}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready",
                            "checks": {"store": "ok", "blob_store": "ok", "egress": "ok"}}


def test_a_clean_stop_hands_every_lease_back(make_relay: Callable[..., RelayProcess],
                                             sink: SmtpSink) -> None:
    """SIGTERM while copies wait and one is on the wire: nothing stays leased, and a
    restarted relay (PostgreSQL: nothing releases leases at start) sends at once,
    though ``delivery_lease`` is an hour."""
    relay = make_relay(smtp_pool_size="1", max_recipients_per_transaction="1",
                       delivery_lease="3600", egress_process="false").start()
    address, members = relay.fresh_list(members=4)
    sink.handler.rcpt_delay = 1.0  # the first copy is on the wire, the others wait
    post(relay, address)
    deadline = time.monotonic() + 20
    while relay.counts()[1]["in_flight"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert relay.counts()[1]["in_flight"] >= 2
    assert relay.stop() == 0
    counts = relay.counts()[1]
    assert counts["in_flight"] == 0 and counts["queued"] + counts["delivered"] == 4
    sink.handler.rcpt_delay = 0.0
    started = time.monotonic()
    relay.start()
    sink.wait_for_copies(members, timeout=30)
    relay.wait_settled(timeout=30)
    assert time.monotonic() - started < 30
    assert len([m for m in sink.messages for r in m.rcpt_tos if r in members]) == 4


def wait_logged(relay: RelayProcess, text: str, after: int) -> None:
    """Until ``text`` is in the relay's log past byte ``after`` (10 s at most)."""
    deadline = time.monotonic() + 10
    while text not in relay.log()[after:]:
        assert time.monotonic() < deadline, f"{text!r} not logged\n{relay.log()[-3000:]}"
        time.sleep(0.02)


def test_sighup_reloads_routes_and_the_log_level(make_relay: Callable[..., RelayProcess],
                                                 sink: SmtpSink, tmp_path: Path) -> None:
    config = tmp_path / "mailflow.toml"
    with SmtpSink() as other:
        def write(level: str, routes: dict[str, str]) -> None:
            lines = [f'log_level = "{level}"', "[routes]",
                     *(f'"{domain}" = "{url}"' for domain, url in routes.items())]
            config.write_text("\n".join(lines) + "\n")

        write("WARNING", {"a.test": other.url})
        relay = make_relay(config=str(config), poll_interval="0.1").start()
        assert relay.process is not None
        address, _ = relay.fresh_list(members=0)
        with relay.repository() as repo:
            repo.add_members(address, ["x@a.test", "y@b.test"], time.time())
        post(relay, address)
        assert other.wait_for_copies(["x@a.test"])
        assert sink.wait_for_copies(["y@b.test"])
        assert "receive " not in relay.log()  # WARNING: no mail log

        logged = len(relay.log())
        write("INFO", {"b.test": other.url})  # the same provider, another domain
        relay.process.send_signal(signal.SIGHUP)
        wait_logged(relay, f"routes reloaded: b.test -> {other.url}", logged)
        wait_logged(relay, "log level now INFO", logged)
        post(relay, address)
        assert other.wait_for_copies(["y@b.test"])
        assert sink.wait_for_copies(["x@a.test"], count=1)
        assert "receive " in relay.log()[logged:]

        logged = len(relay.log())
        write("INFO", {"b.test": "smtp://127.0.0.1:9"})  # a provider the relay does not run
        relay.process.send_signal(signal.SIGHUP)
        wait_logged(relay, "routes not reloaded, they name providers this relay does not "
                           "run (smtp://127.0.0.1:9)", logged)
        assert relay.process.poll() is None
