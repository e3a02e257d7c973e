"""Today's relay and the redesigned one, interleaved in one run: ``python -m bench.compare``.

``make bench-compare``.  Issue 9 asks that "today's code and the redesigned code measured
interleaved in one run" show scenarios A, B, C, E and F within 5 % of each other and peak
RSS within 10 %.  Old is ``--baseline`` (default 9f89b2a, the last commit before the
redesign), unpacked and given its own virtualenv under ``bench/out/compare/``
(:mod:`bench.sides`); new is the current working tree.  For each scenario the runs
alternate old, new, old, new ... (``--runs`` of each), each a fresh relay, store and sink
exactly as ``bench.peers`` runs MailFlow; the medians, the ratio new / old of each figure
(throughput; C's p50 and p99; peak RSS) and a verdict against the issue's bounds are
printed, and written to ``bench/out/compare/latest.{md,json}``.  With ``--write-results``
(the default at ``--scale 1``) the table also goes into ``bench/RESULTS.md`` (between
``<!-- compare -->`` markers, which ``make bench`` keeps) and ``bench/compare.json``.

Why every run is a process of its own (``bench/compare_worker.py``) in the side's
interpreter, with the side's tree as its working directory: the relay is a subprocess
(``python -m mailflow serve`` through :class:`mailflow.testing.relay.RelayProcess`), but
the benchmark process itself imports ``mailflow`` too (the store set-up before the relay
starts, the completion checks after), and the relay subprocess takes ``mailflow`` from
the working directory first.  One process per run with the side's interpreter makes
every piece of MailFlow in a run the side's own; the worker checks which ``mailflow``
it imported.

Which ``bench`` code measures (``--harness``): ``own`` (the default) runs each side's own
``bench/scenarios.py``, because a redesign may change the store API the set-up calls
(lists, members) and each side's benchmark is the one its own tests keep working;
``current`` runs today's working-tree benchmark against both sides, for when the
measuring files differ.  Either way the timed interval is the relay's alone (first SMTP
command to the relay's own delivery stamps, or the sink's for C): the benchmark only
sets up before the relay starts and polls a read-only connection while it runs.  The
report lists the measuring files that differ between the two sides, so a reader knows
whether the two sides were measured by the same code.

The bounds are read as the issue's heading says, "no slower than today": a throughput
passes when new >= 0.95 x old, a latency (C p50, C p99) when new <= 1.05 x old, peak
RSS when new <= 1.10 x old; a figure better by more than the bound is marked so.

Exit status: 0 when every run completed (whatever the verdicts), 2 when one could not.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import machine as machine_info
from bench import report
from bench.run import checked_args, code_version
from bench.scenarios import SCENARIOS
from bench.sides import (
    CACHE,
    MEASURING,
    ROOT,
    Side,
    SideError,
    freeze,
    measuring_diff,
    new_side,
    old_side,
    resolve,
    run_once,
)
from bench.sinks import SinkError, resolve_kind

BASELINE = "9f89b2a"
KEYS = ("A", "B", "C", "E", "F")
COMPARE_JSON = report.HERE / "compare.json"
LATEST = CACHE / "latest"
TITLE = "Redesign (issue 9): before and after, interleaved"


@dataclass(frozen=True)
class Figure:
    """One compared figure: where it is in a run's record and which way is better."""
    name: str
    unit: str
    higher_is_better: bool
    bound: float                       # the allowed relative worsening
    pick: Callable[[dict[str, Any]], float]
    combine: Callable[[list[float]], float] = statistics.median


def figures(key: str) -> list[Figure]:
    """The figures of scenario ``key``: its headline (C: p50 and p99) and peak RSS."""
    unit = SCENARIOS[key][1]
    rss = Figure("peak RSS", "MB", False, 0.10, lambda r: float(r["rss_mb"]), max)
    if key == "C":
        return [Figure("p50", "ms", False, 0.05, lambda r: float(r["details"]["p50_ms"])),
                Figure("p99", "ms", False, 0.05, lambda r: float(r["details"]["p99_ms"])),
                rss]
    return [Figure("throughput", unit, True, 0.05, lambda r: float(r["value"])), rss]


def verdict(figure: Figure, ratio: float) -> str:
    """``ok``, ``ok (better)`` or the miss, against the figure's bound (module docstring)."""
    worse = 1 - ratio if figure.higher_is_better else ratio - 1
    if worse > figure.bound:
        return "LARGER" if figure.unit == "MB" else "SLOWER"
    return "ok (better)" if -worse > figure.bound else "ok"


def spread(values: list[float]) -> float | None:
    """(largest - smallest) / median of one side's runs: the noise a verdict stands on
    (``None`` from one run, which shows no noise at all)."""
    middle = statistics.median(values)
    if len(values) < 2:
        return None
    return (max(values) - min(values)) / middle if middle else 0.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description="Scenarios A, B, C, E and F against today's relay (--baseline) and the "
                    "current working tree, interleaved in one run.")
    parser.add_argument("--baseline", default=BASELINE, metavar="REV",
                        help=f"git revision of today's code (default {BASELINE}, the last "
                             "commit before the redesign)")
    parser.add_argument("--scenario", type=str.upper, choices=[*KEYS, "ALL"], default="ALL",
                        help="A, B, C, E, F or all (default)")
    parser.add_argument("--runs", type=int, default=3, help="runs per side (default 3)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiplier for message and member counts (default 1.0)")
    parser.add_argument("--harness", choices=["own", "current"], default="own",
                        help="own: each side's bench/scenarios.py measures it (default); "
                             "current: the working tree's for both")
    write = parser.add_mutually_exclusive_group()
    write.add_argument("--write-results", dest="write", action="store_true", default=None,
                       help="write bench/RESULTS.md's section and bench/compare.json (the "
                            "default at --scale 1)")
    write.add_argument("--no-write", dest="write", action="store_false")
    parser.add_argument("--sink", choices=["auto", "smtp-sink", "python"], default="auto",
                        help="auto: Postfix smtp-sink if installed, else the Python sink")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--timeout-factor", type=float, default=1.0)
    return checked_args(parser, argv)


# -- measuring ----------------------------------------------------------------------------

def summarize(key: str, old: list[dict[str, Any]], new: list[dict[str, Any]]
              ) -> dict[str, Any]:
    """Per figure: each side's runs and median (RSS: peak), new / old and the verdict."""
    rows = []
    for figure in figures(key):
        old_runs = [figure.pick(r) for r in old]
        new_runs = [figure.pick(r) for r in new]
        before, after = figure.combine(old_runs), figure.combine(new_runs)
        ratio = after / before if before else float("inf")
        limit = 1 - figure.bound if figure.higher_is_better else 1 + figure.bound
        rows.append({"figure": figure.name, "unit": figure.unit,
                     "bound": f"{'>=' if figure.higher_is_better else '<='} {limit:.2f}x",
                     "old": before, "new": after, "ratio": ratio,
                     "verdict": verdict(figure, ratio), "old_runs": old_runs,
                     "new_runs": new_runs, "old_spread": spread(old_runs),
                     "new_spread": spread(new_runs),
                     "noisy": any(s is not None and s > figure.bound
                                  for s in (spread(old_runs), spread(new_runs)))})
    return {"title": SCENARIOS[key][0], "unit": SCENARIOS[key][1],
            "params": new[0]["params"], "old_params": old[0]["params"], "figures": rows,
            "old": old, "new": new}


def measure(keys: list[str], sides: tuple[Side, Side], harness: dict[str, Path],
            args: argparse.Namespace, sink: tuple[str, str | None]
            ) -> dict[str, dict[str, Any]]:
    """``--runs`` runs of each side per scenario, alternating old, new, old, new ..."""
    results: dict[str, dict[str, Any]] = {}
    for key in keys:
        print(f"{key} ({SCENARIOS[key][0]}) ...", file=sys.stderr, flush=True)
        done: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
        for number in range(1, args.runs + 1):
            for side in sides:
                done[side.name].append(run_once(
                    side, harness[side.name], key, args.scale, sink[0], sink[1],
                    args.data_root, args.timeout_factor))
            shown = ", ".join(f"{side.label} {brief(key, done[side.name][-1])}"
                              for side in sides)
            print(f"  {key} run {number}/{args.runs}: {shown}", file=sys.stderr, flush=True)
        results[key] = summarize(key, done["old"], done["new"])
    return results


def brief(key: str, record: dict[str, Any]) -> str:
    if key == "C":
        figure = (f"p50 {record['details']['p50_ms']:.1f} ms, "
                  f"p99 {record['details']['p99_ms']:.1f} ms")
    else:
        figure = f"{record['value']:,.0f} {SCENARIOS[key][1]}"
    return f"{figure} ({record['rss_mb']:.0f} MB)"


# -- the table ----------------------------------------------------------------------------

def number(value: float, unit: str) -> str:
    return f"{value:,.1f} {unit}" if unit in ("ms", "MB") and value < 1000 else \
        f"{value:,.0f} {unit}"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def runs_text(values: list[float], unit: str) -> str:
    digits = ".1f" if unit in ("ms", "MB") else ",.0f"
    return " / ".join(format(v, digits) for v in values)


def table(results: dict[str, dict[str, Any]], labels: tuple[str, str]
          ) -> tuple[list[str], list[list[str]]]:
    header = ["Scenario", "Workload", "Figure", f"Old: {labels[0]}", f"New: {labels[1]}",
              "New / old", "Bound", "Verdict", "Spread old; new", "Runs old; new"]
    rows = []
    for key, r in results.items():
        workload = report.WORKLOAD[key].format(**r["params"])
        for f in r["figures"]:
            combined = "max" if f["unit"] == "MB" else "median"
            rows.append([f"{key} {r['title']}", workload, f"{f['figure']} ({combined})",
                         number(f["old"], f["unit"]), number(f["new"], f["unit"]),
                         f"{f['ratio']:.3f}", f["bound"], f["verdict"],
                         f"{percent(f['old_spread'])}; {percent(f['new_spread'])}",
                         f"{runs_text(f['old_runs'], f['unit'])}; "
                         f"{runs_text(f['new_runs'], f['unit'])}"])
    return header, rows


METHOD = """\
Each scenario is run as `make bench-peers` runs MailFlow (a fresh relay, SQLite store \
and sink per run, the same messages, counts and members), alternating today's code and \
the redesign run after run in one invocation; each run is a process of its own with the \
side's own virtualenv and tree (`bench/compare_worker.py`), so the relay and every \
`mailflow` import in it are that side's code. Today's code is unpacked with `git archive` \
into `bench/out/compare/` and installed into its own virtualenv with the current \
virtualenv's package versions as constraints. Throughput and latency figures are medians \
of the runs; peak RSS is the largest `VmHWM` of relay + child process over the runs; \
Spread is (largest - smallest) / median of one side's runs. \
Bounds (issue 9, "no slower than today"): a throughput passes when new / old >= 0.95, \
C's p50 and p99 when new / old <= 1.05, peak RSS when new / old <= 1.10; "ok (better)" \
is better by more than the bound."""


def markdown_section(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    header, rows = table(results, meta["labels"])
    measuring = ("identical on both sides" if not meta["measuring_diff"] else
                 "differs between the sides in " + ", ".join(
                     f"`{p}`" for p in meta["measuring_diff"]))
    deps = ("same versions on both sides" if not meta["dependency_diff"] else
            "differ: " + "; ".join(meta["dependency_diff"]))
    lines = [
        "<!-- compare -->",
        f"## {TITLE}",
        "",
        "Written by `make bench-compare` (`.venv/bin/python -m bench.compare`); `make bench` "
        "keeps this section.",
        "",
        f"- Date: {meta['date']}; old: {meta['labels'][0]}"
        + (", the last commit before the redesign" if meta["baseline"].startswith(BASELINE)
           else "") + f"; new: {meta['labels'][1]}",
        f"- Reproduce: `{meta['command']}`; {meta['runs']} run(s) per side per scenario, "
        f"alternating old, new, old, new ... at scale {meta['scale']:g}",
        f"- Machine: {machine_info.summary(meta['machine'])}",
        f"- Sink: {meta['sink']}",
        f"- Measured by: {meta['harness_text']}; the measuring files "
        f"({', '.join(f'`{p}`' for p in meta['measuring'])}) {measuring}",
        f"- Dependencies (`pip freeze`): {deps}",
        f"- Verdict: {meta['overall']}",
        "",
        report.markdown_table(header, rows),
        "",
        METHOD,
        "<!-- /compare -->",
    ]
    return "\n".join(lines)


def write_section(section: str, md_path: Path = report.RESULTS_MD) -> None:
    """Put ``section`` in RESULTS.md: replace the old one, else before the keep block."""
    report.write_section(section, report.COMPARE, md_path)


def overall(results: dict[str, dict[str, Any]]) -> str:
    differ = [key for key, r in results.items() if r["params"] != r["old_params"]]
    missed = [f"{key} {f['figure']} {f['verdict']} ({f['ratio']:.3f}x)"
              for key, r in results.items() for f in r["figures"]
              if not f["verdict"].startswith("ok")]
    noisy = [f"{key} {f['figure']}" for key, r in results.items() for f in r["figures"]
             if f["noisy"]]
    text = "every figure within its bound" if not missed else "missed: " + "; ".join(missed)
    if noisy:
        text += (f". The runs of one side spread wider than the bound in {', '.join(noisy)}"
                 " (the Spread column): those verdicts are not conclusive; more runs or a "
                 "quieter machine")
    if all(f["old_spread"] is None for r in results.values() for f in r["figures"]):
        text += ". One run per side: no spread to judge the noise by"
    if differ:
        text += (f". WORKLOADS DIFFER between the sides' benchmarks in {', '.join(differ)} "
                 "(see the JSON's params and old_params; --harness current measures both "
                 "with one)")
    return text


def dependency_diff(old: Side, new: Side) -> list[str]:
    """Packages installed on both sides in different versions (``pip freeze``).

    Packages on one side only are left out: the current virtualenv has the development
    tools too, and a package the redesign added is part of the redesign.
    """
    def versions(side: Side) -> dict[str, str]:
        pairs = (line.split("==", 1) for line in freeze(side.python))
        return {name.lower().replace("_", "-"): version for name, version in pairs}

    before, after = versions(old), versions(new)
    return [f"{name} {before[name]} (old) vs {after[name]} (new)"
            for name in sorted(before.keys() & after.keys()) if before[name] != after[name]]


# -- the command --------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keys = list(KEYS) if args.scenario == "ALL" else [args.scenario]
    try:
        sink = resolve_kind(args.sink)
        commit = resolve(args.baseline)
        old = old_side(commit, log=lambda line: print(line, file=sys.stderr, flush=True))
    except (SinkError, SideError) as exc:
        print(f"bench.compare: error: {exc}", file=sys.stderr)
        return 2
    code = code_version()
    new = new_side(f"redesign (git {code})")
    harness = ({"old": old.root, "new": new.root} if args.harness == "own"
               else {"old": ROOT, "new": ROOT})
    sink_name = (f"Postfix smtp-sink ({sink[1]})" if sink[0] == "smtp-sink" else
                 "Python sink (mailflow.testing.sink, aiosmtpd)")
    given = shlex.join(sys.argv[1:] if argv is None else argv)
    machine = machine_info.describe(args.data_root or Path(tempfile.gettempdir()))
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "baseline": commit, "code": code, "labels": (old.label, new.label),
        "runs": args.runs, "scale": args.scale, "harness": args.harness,
        "harness_text": ("each side's own `bench/scenarios.py`" if args.harness == "own"
                         else "the working tree's `bench/scenarios.py` for both sides"),
        "measuring": list(MEASURING), "measuring_diff": measuring_diff(commit),
        "command": f"make bench-compare BENCH_ARGS={shlex.quote(given)}" if given
        else "make bench-compare", "machine": machine, "sink": sink_name,
    }
    try:
        meta["dependency_diff"] = dependency_diff(old, new)
    except SideError as exc:
        meta["dependency_diff"] = [f"not compared: {exc}"]
    print(f"bench.compare: {old.label} vs {new.label}: scenario(s) {', '.join(keys)}, "
          f"{args.runs} run(s) each, alternating, scale {args.scale:g}, sink {sink_name}",
          file=sys.stderr)
    if meta["measuring_diff"]:
        print(f"bench.compare: note: measuring files differ between the sides: "
              f"{', '.join(meta['measuring_diff'])} (--harness {args.harness})",
              file=sys.stderr)
    began = time.monotonic()
    try:
        results = measure(keys, (old, new), harness, args, sink)
    except SideError as exc:
        print(f"bench.compare: FAILED: {exc}", file=sys.stderr)
        return 2
    meta["wall_s"] = round(time.monotonic() - began, 1)
    meta["overall"] = overall(results)
    header, rows = table(results, meta["labels"])
    print()
    print(f"{TITLE}: {args.runs} run(s) per side; machine: {machine_info.summary(machine)}")
    print(report.plain_table(header, rows))
    print(f"\nVerdict: {meta['overall']} ({meta['wall_s']:.0f} s)")
    record = json.dumps({"meta": meta, "results": results}, indent=2, sort_keys=True) + "\n"
    CACHE.mkdir(parents=True, exist_ok=True)
    LATEST.with_suffix(".json").write_text(record)
    LATEST.with_suffix(".md").write_text(markdown_section(results, meta) + "\n")
    print(f"wrote {LATEST.with_suffix('.md')} and {LATEST.with_suffix('.json')}")
    if args.write:
        COMPARE_JSON.write_text(record)
        write_section(markdown_section(results, meta))
        print(f"wrote {report.RESULTS_MD} (section '{TITLE}') and {COMPARE_JSON}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
