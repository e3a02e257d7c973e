"""Run the benchmarks and report: ``python -m bench.run [options]`` (``make bench``).

Scenarios (see ``bench/scenarios.py``): A ingest, B fan-out, C latency, D HTTP ingest,
E one post to a 100,000-member list, F personalized fan-out (one recipient per
transaction).  ``--scenario all`` runs A to F.  Each figure is
the median of ``--runs`` runs, each on a fresh relay, store and sink.  At ``--scale 1``
the results are written to ``bench/RESULTS.md`` (and ``bench/results.json``) unless
``--no-write`` is given; other scales write only with ``--write-results``.

Exit status: 0 when every scenario completed (whether or not it met its target),
2 when one could not complete (messages lost, deferred, or not delivered in time).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from bench import machine as machine_info
from bench import report
from bench.scenarios import SCENARIOS, BenchError, Options, loadgen_ceiling, run_scenario
from bench.sinks import SinkError, resolve_kind

KEYS = tuple(SCENARIOS)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description="MailFlow Relay benchmarks (see bench/).")
    parser.add_argument("--scenario", choices=[*KEYS, "all", *(k.lower() for k in KEYS)],
                        default="all", help="which scenario to run (default: all)")
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (default 3)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiplier for message and member counts (default 1.0)")
    write = parser.add_mutually_exclusive_group()
    write.add_argument("--write-results", dest="write", action="store_true", default=None,
                       help="write bench/RESULTS.md and bench/results.json (the default "
                            "at --scale 1)")
    write.add_argument("--no-write", dest="write", action="store_false",
                       help="only print the table")
    parser.add_argument("--sink", choices=["auto", "smtp-sink", "python"], default="auto",
                        help="auto: Postfix smtp-sink if installed, else the Python sink")
    parser.add_argument("--set", dest="settings", action="append", default=[],
                        metavar="FIELD=VALUE",
                        help="extra relay setting, e.g. smtp_pool_size=16 (repeatable)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="where the temporary data directories go (default: $TMPDIR)")
    parser.add_argument("--timeout-factor", type=float, default=1.0,
                        help="multiply every completion timeout (slow machines)")
    parser.add_argument("--rules", action="store_true",
                        help="A: 1,000 sender block entries and 10 filter rules on the "
                             "alias, none matching (issue 11's accept-path cost)")
    parser.add_argument("--decorated", action="store_true",
                        help="B and F: the list with a subject prefix, a footer and a DKIM "
                             "key; F also personalized (issue 12's decoration cost)")
    return checked_args(parser, argv)


def checked_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse and check the options every bench command shares (--runs, --scale, --write)."""
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.scale <= 0:
        parser.error("--scale must be positive")
    if args.write is None:
        args.write = args.scale == 1.0
    return args


def relay_settings(pairs: list[str]) -> dict[str, str]:
    settings = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"--set expects FIELD=VALUE, got {pair!r}")
        key = name.strip().upper()
        settings[key if key.startswith("MAILFLOW_") else f"MAILFLOW_{key}"] = value
    return settings


def code_version() -> str:
    """The relay's git commit, flagged when mailflow/ has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "mailflow"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if not head:
        return "unknown"
    return f"{head} + uncommitted changes in mailflow/" if dirty else head


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keys = list(KEYS) if args.scenario == "all" else [args.scenario.upper()]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sink_kind, sink_binary = resolve_kind(args.sink)
        for warning in caught:
            print(f"warning: {warning.message}", file=sys.stderr)
    except SinkError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    options = Options(runs=args.runs, scale=args.scale, sink_kind=sink_kind,
                      sink_binary=sink_binary, relay_settings=relay_settings(args.settings),
                      data_root=args.data_root, timeout_factor=args.timeout_factor,
                      rules=args.rules, decorated=args.decorated)
    machine = machine_info.describe(args.data_root or Path(tempfile.gettempdir()))
    sink_name = f"Postfix smtp-sink ({sink_binary})" if sink_kind == "smtp-sink" else \
        "Python sink (mailflow.testing.sink, aiosmtpd)"
    given = shlex.join(sys.argv[1:] if argv is None else argv)
    command = f"make bench BENCH_ARGS={shlex.quote(given)}" if given else "make bench"
    print(f"MailFlow Relay benchmarks: scenario(s) {', '.join(keys)}, {args.runs} run(s), "
          f"scale {args.scale:g}, sink {sink_name}", file=sys.stderr)
    print(f"Machine: {machine_info.summary(machine)}", file=sys.stderr)
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    code = code_version()
    entries: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    for key in keys:
        title = SCENARIOS[key][0]
        print(f"{key} ({title}) ...", file=sys.stderr, flush=True)
        began = time.monotonic()
        try:
            ceiling = loadgen_ceiling(options) if key == "A" else None
            result = run_scenario(key, options)
        except (BenchError, SinkError) as exc:
            print(f"bench: scenario {key} FAILED: {exc}", file=sys.stderr)
            failed.append(key)
            continue
        meta: dict[str, Any] = {
            "date": date, "code": code,
            "command": command, "machine": machine, "sink": sink_name,
            "relay_settings": options.relay_settings, "scale": args.scale,
            "runs_requested": args.runs, "wall_s": round(time.monotonic() - began, 1),
        }
        if ceiling is not None:
            meta["loadgen_ceiling"] = round(ceiling, 1)
        entries[key] = report.entry(result, meta)
    if entries:
        print()
        print(report.terminal_report(entries, machine, sink_name, args.runs))
        if args.write:
            report.write_results(entries, machine)
            print(f"\nwrote {report.RESULTS_MD.relative_to(Path.cwd())}"
                  if report.RESULTS_MD.is_relative_to(Path.cwd()) else
                  f"\nwrote {report.RESULTS_MD}")
    if failed:
        print(f"bench: scenario(s) {', '.join(failed)} did not complete", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
