"""The benchmark suite at a tiny scale: every scenario completes and nothing is lost.

Counts only, never timings: a slow machine must not fail this.  Uses Postfix's smtp-sink
when it is installed, else the Python sink (as ``make bench`` does); one fan-out run
always uses the Python sink, which counts recipients too.  Writes no RESULTS.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench import report
from bench.arrivals import ArrivalWatch
from bench.run import main, parse_args
from bench.scenarios import Options, RunResult, ScenarioResult, run_scenario
from bench.sinks import find_smtp_sink

pytestmark = pytest.mark.timeout(120)

SMTP_SINK = find_smtp_sink()
# The smallest scale at which every scenario still shows what it shows (each size is
# the scenario's minimum but E's): A, D: 8 messages; B: 5 posts x 10 members; C: 5 posts
# (+1 warm-up) x 10; E: 1 post x 100 members, so more than one transaction (at most 50
# recipients each); F: 1 post x 10 members, one recipient per transaction.
SCALE = 0.001


def options(kind: str | None = None) -> Options:
    kind = kind or ("smtp-sink" if SMTP_SINK else "python")
    return Options(runs=1, scale=SCALE, sink_kind=kind,
                   sink_binary=SMTP_SINK if kind == "smtp-sink" else None,
                   log=lambda line: None)


@pytest.fixture(scope="module")
def results() -> dict[str, ScenarioResult]:
    return {}


@pytest.mark.parametrize("key", ["A", "D"], ids=["smtp", "http"])
def test_ingest_delivers_every_message(key: str, results: dict[str, ScenarioResult]) -> None:
    result = run_scenario(key, options())
    (run,) = result.runs
    assert result.params["messages"] == 8
    assert run.details["messages"] == 8
    assert run.details["delivered"] == 8
    assert run.details["sink_transactions"] == 8
    assert run.value > 0 and run.rss_mb > 0
    results[key] = result


def test_fanout_delivers_to_every_member(results: dict[str, ScenarioResult]) -> None:
    result = run_scenario("B", options())
    (run,) = result.runs
    assert (result.params["posts"], result.params["members"]) == (5, 10)
    assert run.details["messages"] == 5
    assert run.details["delivered"] == 50
    assert run.details["sink_transactions"] >= 5  # one per post at least
    results["B"] = result


def test_fanout_with_the_python_sink_counts_recipients() -> None:
    result = run_scenario("B", options("python"))
    (run,) = result.runs
    assert run.details["delivered"] == 50
    assert run.details["sink_recipients"] == 50


def test_latency_delivers_every_post(results: dict[str, ScenarioResult]) -> None:
    result = run_scenario("C", options())
    (run,) = result.runs
    posts = result.params["posts"]
    assert posts == 5
    assert run.details["messages"] == posts + 1  # with the warm-up post
    assert run.details["delivered"] == (posts + 1) * 10
    assert run.details["sink_transactions"] == posts + 1
    assert 0 < run.details["p50_ms"] <= run.details["p99_ms"]
    results["C"] = result


def test_big_list_stores_the_body_once(results: dict[str, ScenarioResult]) -> None:
    result = run_scenario("E", options())
    (run,) = result.runs
    assert result.params["members"] == 100
    assert run.details["messages"] == 1
    assert run.details["delivered"] == 100
    assert run.details["sink_transactions"] >= 2  # at most 50 recipients per transaction
    # The 2 KB body is stored once, in its database row (below max_body_in_database).
    assert run.details["bodies_stored"] == 1
    assert run.details["body_bytes"] == 2048
    assert run.details["blob_files"] == 0 and run.details["db_bytes"] > 0
    results["E"] = result


def test_personalized_fanout_sends_one_transaction_per_member(
        results: dict[str, ScenarioResult]) -> None:
    result = run_scenario("F", options())
    (run,) = result.runs
    assert result.params["members"] == 10
    assert run.details["messages"] == 1
    assert run.details["delivered"] == 10
    assert run.details["sink_transactions"] == 10
    results["F"] = result


def test_report_renders_without_touching_results_md(
        results: dict[str, ScenarioResult], tmp_path: Path) -> None:
    if not results:
        pytest.fail("the scenario tests did not run first")
    before = report.RESULTS_MD.stat().st_mtime_ns if report.RESULTS_MD.exists() else None
    meta = {"date": "2000-01-01 00:00 UTC", "command": "test", "machine": {}, "sink": "test",
            "relay_settings": {}, "scale": SCALE, "runs_requested": 1}
    entries = {key: report.entry(result, meta) for key, result in results.items()}
    kept = "<!-- keep -->\nhand-written analysis\n<!-- /keep -->"
    (tmp_path / "RESULTS.md").write_text(f"old table\n{kept}\n")
    report.write_results(entries, {}, tmp_path / "results.json", tmp_path / "RESULTS.md")
    text = (tmp_path / "RESULTS.md").read_text()
    assert kept in text and "old table" not in text
    for key in entries:
        assert f"| {key} " in text
    assert "| RSS |" in text
    peers = "<!-- peers -->\nside by side\n<!-- /peers -->"
    (tmp_path / "RESULTS.md").write_text(f"old\n{peers}\n{kept}\n")
    report.write_results(entries, {}, tmp_path / "results.json", tmp_path / "RESULTS.md")
    text = (tmp_path / "RESULTS.md").read_text()
    assert peers in text and kept in text
    after = report.RESULTS_MD.stat().st_mtime_ns if report.RESULTS_MD.exists() else None
    assert before == after


def test_results_are_written_only_at_full_scale_by_default() -> None:
    assert parse_args([]).write is True
    assert parse_args(["--no-write"]).write is False
    assert parse_args(["--scale", "0.01"]).write is False
    assert parse_args(["--scale", "0.01", "--write-results"]).write is True


def test_cli_rejects_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        main(["--runs", "0"])


def test_arrival_watch_stamps_when_a_file_is_closed(tmp_path: Path) -> None:
    with ArrivalWatch(tmp_path) as watch:
        before = time.time()
        with (tmp_path / "one").open("w") as file:
            file.write("x")
            time.sleep(0.05)
            assert watch.closed_at("one") is None  # still open: not arrived
        deadline = time.monotonic() + 5
        while watch.closed_at("one") is None and time.monotonic() < deadline:
            time.sleep(0.001)
        stamp = watch.closed_at("one")
    assert stamp is not None and before + 0.05 <= stamp <= time.time()


def test_compare_runs_a_side_in_its_own_process_and_renders_the_table(tmp_path: Path) -> None:
    """bench.compare's pieces without the baseline's virtualenv: the working tree as both
    sides (one run each of F), the table, the verdicts and its RESULTS.md section."""
    from bench import compare
    from bench.sides import ROOT, new_side, run_once

    side = new_side("this tree")
    kind = "smtp-sink" if SMTP_SINK else "python"
    records = [run_once(side, ROOT, "F", SCALE, kind, SMTP_SINK if SMTP_SINK else None,
                        None, 1.0) for _ in range(2)]
    for record in records:
        assert record["details"]["delivered"] == record["params"]["deliveries"] >= 10
        assert Path(record["mailflow_file"]).is_relative_to(ROOT)
    result = compare.summarize("F", [records[0]], [records[1]])
    figures = {f["figure"]: f for f in result["figures"]}
    assert set(figures) == {"throughput", "peak RSS"}
    assert figures["throughput"]["ratio"] == records[1]["value"] / records[0]["value"]

    meta = {"date": "2000-01-01 00:00 UTC", "labels": ("old", "new"), "command": "test",
            "baseline": "0" * 40,
            "runs": 1, "scale": SCALE, "machine": {}, "sink": "test", "harness_text": "test",
            "measuring": ["bench/scenarios.py"], "measuring_diff": [], "dependency_diff": [],
            "overall": compare.overall({"F": result})}
    section = compare.markdown_section({"F": result}, meta)
    assert section.startswith("<!-- compare -->") and section.endswith("<!-- /compare -->")
    assert "| F personalized fan-out |" in section
    md = tmp_path / "RESULTS.md"
    md.write_text("top\n<!-- keep -->\nkept\n<!-- /keep -->\n")
    compare.write_section(section, md)
    compare.write_section(section, md)  # replaces, never duplicates
    text = md.read_text()
    assert text.count("<!-- compare -->") == 1
    assert text.index("<!-- compare -->") < text.index("<!-- keep -->")
    # make bench rewrites RESULTS.md and keeps the section.
    meta_run = {"date": "2000-01-01 00:00 UTC", "command": "test", "machine": {},
                "sink": "test", "relay_settings": {}, "scale": SCALE, "runs_requested": 1}
    first = records[0]
    entry = report.entry(ScenarioResult("F", "personalized fan-out", "deliveries/s",
                                        first["params"], [RunResult(first["value"],
                                                                    first["rss_mb"],
                                                                    first["details"])]),
                         meta_run)
    report.write_results({"F": entry}, {}, tmp_path / "results.json", md)
    assert section in md.read_text()


def test_compare_verdicts_follow_the_issue_bounds() -> None:
    from bench.compare import figures, verdict

    throughput, rss = figures("A")
    p50, p99, _ = figures("C")
    assert verdict(throughput, 0.96) == "ok" and verdict(throughput, 0.94) == "SLOWER"
    assert verdict(throughput, 1.06) == "ok (better)"
    assert verdict(p50, 1.04) == "ok" and verdict(p99, 1.06) == "SLOWER"
    assert verdict(p50, 0.9) == "ok (better)"
    assert verdict(rss, 1.09) == "ok" and verdict(rss, 1.11) == "LARGER"


def test_memory_bench_checks_every_body_and_the_bound(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    """Two small messages: every copy arrives intact, and a 1 MB bound is reported
    broken (the relay alone is larger)."""
    from bench.memory import main as memory

    assert memory(["--messages", "2", "--min-mb", "0.2", "--max-mb", "0.3", "--members", "2",
                   "--idle", "0", "--bound", "1"]) == 1
    out, err = capsys.readouterr()
    assert "2 messages of" in out and "VmHWM sum" in out
    assert "over the bound 1.0 MB" in err and "copies arrived" not in err


def test_retention_bench_samples_the_store_after_every_round() -> None:
    from bench import retention

    result = retention.run(seconds=60, retention=0.5, round_size=40, max_rounds=3)
    samples = result["samples"]
    assert isinstance(samples, list)
    assert result["messages"] == 120 and [n for _, n, _ in samples] == [40, 80, 120]
    assert all(size > 0 for _, _, size in samples)
    assert "| elapsed s | messages sent |" in retention.markdown(result)


def test_sqs_ingest_bench_relays_every_message(tmp_path: Path) -> None:
    from bench.sqs_ingest import run as sqs_ingest

    result = sqs_ingest(4, tmp_path)
    assert result["sqs"]["messages"] == result["smtp"]["messages"] == 4
    assert result["sqs"]["relay_cpu_ms_per_message"] > 0
