"""``make bench-peers`` at a tiny scale: Postfix and GNU Mailman deliver everything.

Counts only, never timings.  The Postfix peer needs Postfix and root, and the Mailman
peer its virtualenv (``make mailman-venv``, which CI builds): without them the tests
skip, unless MAILFLOW_TEST_REQUIRE_SERVICES=1, where they fail.  Writes no RESULTS.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from bench import peers
from bench.mailman_peer import MAILMAN_SCENARIOS, mailman_problem
from bench.postfix_peer import POSTFIX_SCENARIOS
from bench.procs import tree_rss
from bench.scenarios import Options
from bench.sinks import find_smtp_sink
from mailflow.testing.postfix import postfix_problem

pytestmark = pytest.mark.timeout(180)

REQUIRE_SERVICES = os.environ.get("MAILFLOW_TEST_REQUIRE_SERVICES") == "1"
SMTP_SINK = find_smtp_sink()
SCALE = 0.01  # A: 20 messages; B: 5 posts x 100 members; C: 5 posts (+1 warm-up) x 10;
# E: 1 post x 1,000 members; F: 1 post x 100 members, one recipient per transaction
# (deliveries, smallest transaction count, largest)
EXPECTED = {"A": (20, 20, 20), "B": (500, 10, 500), "C": (60, 6, 6), "E": (1000, 20, 1000),
            "F": (100, 100, 100)}


def needs(problem: str | None) -> None:
    if problem is None:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"{problem} (MAILFLOW_TEST_REQUIRE_SERVICES=1)")
    pytest.skip(problem)


def options() -> Options:
    return Options(runs=1, scale=SCALE, sink_kind="smtp-sink", sink_binary=SMTP_SINK,
                   log=lambda line: None)


def check_run(key: str, run: Callable[[Options], dict[str, Any]]) -> dict[str, Any]:
    result = run(options())
    deliveries, fewest, most = EXPECTED[key]
    assert result["delivered"] == deliveries
    assert fewest <= result["sink_transactions"] <= most
    assert result["value"] > 0 and result["rss_mb"] > 0 and result["rss_processes"] >= 2
    if key == "C":
        assert 0 < result["p50_ms"] <= result["p99_ms"]
    return result


@pytest.mark.parametrize("key", list(POSTFIX_SCENARIOS))
def test_postfix_peer_delivers_everything(key: str) -> None:
    needs(postfix_problem() or (None if SMTP_SINK else "smtp-sink is not installed"))
    check_run(key, POSTFIX_SCENARIOS[key])


@pytest.mark.parametrize("key", list(MAILMAN_SCENARIOS))
def test_mailman_peer_delivers_everything(key: str) -> None:
    needs(mailman_problem() or (None if SMTP_SINK else "smtp-sink is not installed"))
    result = check_run(key, MAILMAN_SCENARIOS[key])
    if key == "F":  # personalize = individual: one transaction per member
        assert result["sink_transactions"] == 100


def test_process_tree_rss_counts_this_process() -> None:
    total, count = tree_rss(os.getpid())
    assert total > 0 and count >= 1


def test_peers_command_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    needs(postfix_problem())
    assert peers.main(["--scenario", "a", "--scale", str(SCALE), "--runs", "1",
                       "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "MailFlow / Mailman" in out and "A ingest" in out


def test_no_mailman_process_is_left() -> None:
    leftovers = [p for p in os.listdir("/proc") if p.isdigit() and _is_mailman(int(p))]
    assert leftovers == []


def _is_mailman(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read()
    except OSError:
        return False
    return b"mailflow-mailman-" in command


def _record(value: float, **extra: Any) -> dict[str, Any]:
    return {"median": value, "runs": [value], "rss_peak_mb": 100.0, "details": [], **extra}


def test_table_shows_three_systems_ratios_and_why_mailman_is_missing() -> None:
    results = {
        "A": {"title": "ingest", "unit": "msgs/s",
              "params": {"messages": 2000, "size_bytes": 2048, "connections": 8},
              "mailflow": _record(600.0), "postfix": _record(800.0),
              "mailman": _record(20.0)},
        "C": {"title": "latency", "unit": "ms (p50)", "params": {"posts": 50, "members": 10},
              "mailflow": _record(7.0, p99_median=9.0), "postfix": _record(3.5, p99_median=5.0),
              "mailman": {"error": "GNU Mailman's virtualenv is missing"}},
    }
    header, table = peers.side_by_side(results)
    assert header[2:7] == ["MailFlow (median)", "Postfix (median)", "Mailman (median)",
                           "MailFlow / Postfix", "MailFlow / Mailman"]
    assert table[0][2:7] == ["600 msgs/s", "800 msgs/s", "20 msgs/s", "0.75x", "30.00x"]
    assert table[1][4] == "not measured: GNU Mailman's virtualenv is missing"
    assert table[1][5:7] == ["2.00x", "n/a"]
    meta = {"date": "2000-01-01 00:00 UTC", "code": "test", "postfix": "3.7", "mailman": "3.3",
            "runs": 1, "command": "test", "machine": {}, "sink": "test"}
    section = peers.markdown_section(results, meta)
    assert section.startswith("<!-- peers -->") and section.endswith("<!-- /peers -->")
    assert "not measured: GNU Mailman" in section


def test_peers_cli_arguments() -> None:
    args = peers.parse_args(["--scenario", "e", "--scale", "0.01", "--mailman-e-scale", "0.1"])
    assert (args.scenario, args.write, args.mailman_e_scale) == ("E", False, 0.1)
    assert peers.parse_args([]).write is True
    for bad in (["--scenario", "D"], ["--runs", "0"], ["--mailman-e-scale", "2"]):
        with pytest.raises(SystemExit):
            peers.parse_args(bad)
