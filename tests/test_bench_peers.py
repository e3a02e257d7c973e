"""``make bench-peers`` at a tiny scale: Postfix and GNU Mailman deliver everything.

Counts only, never timings.  The Postfix peer needs Postfix and root, and the Mailman
peer its virtualenv (``make mailman-venv``, which CI builds): without them the tests
skip, unless MAILFLOW_TEST_REQUIRE_SERVICES=1, where they fail.  Writes no RESULTS.md.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import peers
from bench.mailman_peer import MAILMAN_SCENARIOS, mailman_problem, one_mailman
from bench.postfix_peer import POSTFIX_SCENARIOS
from bench.procs import tree_rss
from bench.scenarios import Options
from bench.sinks import find_smtp_sink
from mailflow.testing.postfix import postfix_problem

pytestmark = pytest.mark.timeout(180)

REQUIRE_SERVICES = os.environ.get("MAILFLOW_TEST_REQUIRE_SERVICES") == "1"
SMTP_SINK = find_smtp_sink()
# The smallest scale at which every scenario still shows what it shows (each size is
# the scenario's minimum but E's): A: 8 messages; B: 5 posts x 10 members; C: 5 posts
# (+1 warm-up) x 10; E: 1 post x 100 members, so more than one transaction (at most 50
# recipients each); F: 1 post x 10 members, one recipient per transaction.
SCALE = 0.001
# (deliveries, smallest transaction count, largest)
EXPECTED = {"A": (8, 8, 8), "B": (50, 5, 50), "C": (60, 6, 6), "E": (100, 2, 100),
            "F": (10, 10, 10)}


def needs(problem: str | None) -> None:
    if problem is None:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"{problem} (MAILFLOW_TEST_REQUIRE_SERVICES=1)")
    pytest.skip(problem)


@pytest.fixture(scope="module")
def data_root() -> Iterator[Path]:
    """This module's folder for every peer instance, so that the check for leftover
    Mailman processes sees only this run's (other runs may share the machine).
    Mode 0755 outside pytest's 0700 tree: Postfix's users must reach into it."""
    root = Path(tempfile.mkdtemp(prefix="mailflow-peers-test-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def options(data_root: Path) -> Options:
    return Options(runs=1, scale=SCALE, sink_kind="smtp-sink", sink_binary=SMTP_SINK,
                   data_root=data_root, log=lambda line: None)


def check_run(key: str, run: Callable[[Options], dict[str, Any]], data_root: Path
              ) -> dict[str, Any]:
    result = run(options(data_root))
    deliveries, fewest, most = EXPECTED[key]
    assert result["delivered"] == deliveries
    assert fewest <= result["sink_transactions"] <= most
    assert result["value"] > 0 and result["rss_mb"] > 0 and result["rss_processes"] >= 2
    if key == "C":
        assert 0 < result["p50_ms"] <= result["p99_ms"]
    return result


@pytest.mark.parametrize("key", list(POSTFIX_SCENARIOS))
def test_postfix_peer_delivers_everything(key: str, data_root: Path) -> None:
    needs(postfix_problem() or (None if SMTP_SINK else "smtp-sink is not installed"))
    check_run(key, POSTFIX_SCENARIOS[key], data_root)


@pytest.fixture(scope="class")
def mailman(data_root: Path) -> Iterator[None]:
    """One Mailman for a class's scenarios (:func:`one_mailman`): a Mailman start-up is
    the slowest thing in the suite.  Class scope: stopped before the leftovers test."""
    needs(mailman_problem() or (None if SMTP_SINK else "smtp-sink is not installed"))
    with one_mailman(options(data_root)):
        yield


class TestMailmanPeer:
    @pytest.mark.parametrize("key", list(MAILMAN_SCENARIOS))
    def test_mailman_peer_delivers_everything(self, key: str, data_root: Path,
                                              mailman: None) -> None:
        result = check_run(key, MAILMAN_SCENARIOS[key], data_root)
        if key == "F":  # personalize = individual: one transaction per member
            assert result["sink_transactions"] == 10


def test_process_tree_rss_counts_this_process() -> None:
    total, count = tree_rss(os.getpid())
    assert total > 0 and count >= 1


def test_peers_command_prints_the_table(capsys: pytest.CaptureFixture[str],
                                        data_root: Path) -> None:
    """The command end to end; Mailman's runs are the tests above (a Mailman start-up is
    the slowest thing in the suite), so the command leaves Mailman out here."""
    needs(postfix_problem())
    assert peers.main(["--scenario", "a", "--scale", str(SCALE), "--runs", "1",
                       "--no-write", "--no-mailman", "--data-root", str(data_root)]) == 0
    out = capsys.readouterr().out
    assert "MailFlow / Postfix" in out and "MailFlow / Mailman" in out and "A ingest" in out
    assert "not measured" in out


@pytest.mark.parametrize("key", list(peers.DECORATED))
def test_a_decorated_run_decorates_and_signs(key: str, data_root: Path) -> None:
    """B+deco and F+deco must not measure a plain path: through the Python sink, which
    keeps the copies, the run checks one (it raises on anything missing) and says what
    it saw: the prefix, the footer, a DKIM signature dkimpy verifies over DNS, and the
    envelope sender (F: the member's VERP address, with the member's own footer and
    one-click token)."""
    run = peers.mailflow_once(key, Options(runs=1, scale=SCALE, sink_kind="python",
                                           data_root=data_root, log=lambda line: None))
    deliveries, fewest, most = EXPECTED[peers.DECORATED[key]]
    assert run["delivered"] == deliveries and fewest <= run["sink_transactions"] <= most
    assert run["params"]["decorated"] is True
    checked = run["decoration_checked"]
    expected = {"subject_prefix", "footer", "dkim_signed_first", "dkim_verifies"} | (
        {"member_footer", "one_click_unsubscribe", "verp_sender"} if key == "F+deco"
        else {"list_bounce_sender"})
    assert set(checked) == expected and all(checked.values())
    assert run["relay_cpu_ms_per_delivery"] > 0


def test_the_peers_command_runs_a_decorated_variant_beside_both_plain_systems(
        capsys: pytest.CaptureFixture[str], data_root: Path) -> None:
    needs(postfix_problem() or (None if SMTP_SINK else "smtp-sink is not installed"))
    assert peers.main(["--scenario", "f+deco", "--scale", str(SCALE), "--runs", "1",
                       "--no-write", "--no-mailman", "--data-root", str(data_root)]) == 0
    out = capsys.readouterr().out
    assert "F+deco personalized fan-out, decorated" in out
    assert "MailFlow plain" in out and "decorated / Postfix" in out


def test_no_mailman_process_is_left(data_root: Path) -> None:
    leftovers = [p for p in os.listdir("/proc")
                 if p.isdigit() and _is_our_mailman(int(p), data_root)]
    assert leftovers == []


def _is_our_mailman(pid: int, data_root: Path) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read()
    except OSError:
        return False
    return b"mailflow-mailman-" in command and str(data_root).encode() in command


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


def test_the_decorated_table_shows_both_ratios_and_the_cpu_per_delivery() -> None:
    def record(value: float, cpu_ms: float) -> dict[str, Any]:
        return _record(value) | {"details": [{"relay_cpu_ms_per_delivery": cpu_ms}]}

    results = {"F+deco": {"title": "personalized fan-out, decorated", "unit": "deliveries/s",
                          "params": {"members": 10_000},
                          "plain": record(8000.0, 0.2), "mailflow": record(4000.0, 0.6),
                          "postfix": record(2500.0, 1.0)}}
    header, table = peers.decoration_table(results)
    row = dict(zip(header, table[0], strict=True))
    assert row["decorated / Postfix"] == "1.60x" and row["decorated / plain"] == "0.50x"
    assert row["Relay CPU per delivery plain / decorated"] == "0.200 ms / 0.600 ms"
    assert "1 recipient per SMTP transaction; personalized" in peers.workload(
        "F+deco", results["F+deco"]["params"])


def test_peers_cli_arguments() -> None:
    args = peers.parse_args(["--scenario", "e", "--scale", "0.01", "--mailman-e-scale", "0.1"])
    assert (args.scenario, args.write, args.mailman_e_scale) == ("E", False, 0.1)
    assert peers.parse_args([]).write is True
    assert peers.parse_args(["--scenario", "b+deco"]).scenario == "B+DECO"
    assert peers.parse_args(["--scenario", "deco"]).scenario == "DECO"
    for bad in (["--scenario", "D"], ["--scenario", "A+deco"], ["--runs", "0"],
                ["--mailman-e-scale", "2"]):
        with pytest.raises(SystemExit):
            peers.parse_args(bad)
