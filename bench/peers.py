"""MailFlow side by side with Postfix and GNU Mailman 3: ``python -m bench.peers [options]``.

``make bench-peers`` (which first builds Mailman's own virtualenv, ``make mailman-venv``).
Runs scenarios A (ingest), B (fan-out), C (latency), E (100,000-member list) and F
(one transaction per recipient) against three systems in turn, run after run: MailFlow
exactly as ``bench.run`` does (:mod:`bench.scenarios`), a private Postfix in the same
relay role (:mod:`bench.postfix_peer`) and a private GNU Mailman 3 core
(:mod:`bench.mailman_peer`), each with the same workload and the same kind of sink (Postfix's
``smtp-sink``), and prints each system's median with the ratios MailFlow / Postfix and
MailFlow / Mailman.  At ``--scale 1`` the table goes into its own section of
``bench/RESULTS.md`` (between ``<!-- peers -->`` markers, which ``make bench`` keeps)
unless ``--no-write`` is given, and the runs into ``bench/peers.json``.

How each peer is configured, timed and checked is in the docstrings of those modules
(and in the RESULTS.md section).  In short: start is always ``time.time()`` before the
first command of the first message; the end is MailFlow's own delivery stamps, Postfix's
``status=sent`` maillog lines as they appear (C: the sink's transaction files), and for
Mailman when the sink closed its transaction files (``smtp-sink -d``; stamped by
:mod:`bench.arrivals`, since file modification times are coarse).
Peak RSS is the relay's ``VmHWM`` plus its child process's (egress and listeners) for
MailFlow, and the peak of the sum of ``VmRSS`` over all processes (sampled every 100 ms)
for Postfix and Mailman.

``B+deco`` and ``F+deco`` (issue 12; ``--scenario deco`` runs both, ``all`` includes
them) are B and F with MailFlow's list decorated and DKIM-signing
(``bench.run --decorated``), in a rotation with MailFlow plain and Postfix plain (which
relays plain: no signing); a second table puts the three side by side with the relay's
CPU per delivery.  A decorated run checks a copy at the sink where the sink keeps copies
(the Python sink, in ``tests/test_bench_peers.py``).

``--mailman-e-scale`` runs Mailman's E at a fraction of E's 100,000 members (making the
members and expanding them takes Mailman minutes); the table then says at what size.
If Mailman cannot run (no virtualenv) or a Mailman run fails, its cells say why and
the other systems' figures still stand.

Exit status: 0 when every MailFlow and Postfix run completed, 2 when one could not.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import machine as machine_info
from bench import report
from bench.mailman_peer import MAILMAN_SCENARIOS, mailman_problem, mailman_version
from bench.postfix_peer import POSTFIX_SCENARIOS
from bench.run import checked_args, code_version
from bench.scenarios import SCENARIOS, BenchError, Options, run_scenario
from bench.sinks import SinkError, resolve_kind
from mailflow.testing.postfix import PostfixError, postfix_problem

PEERS_JSON = report.HERE / "peers.json"
PEER_KEYS = ("A", "B", "C", "E", "F")
# Issue 12: B and F with the list decorated (``--decorated`` of bench.run) against the
# same Postfix, which relays B and F plain: what decoration, DKIM and VERP cost.
DECORATED = {"B+deco": "B", "F+deco": "F"}
DECORATED_WORKLOAD = {
    "B+deco": "{base}; subject prefix, footer, DKIM (shared copies)",
    "F+deco": "{base}; personalized: member's footer, one-click token, VERP; DKIM per member",
}
SCENARIO_CHOICES = {key.upper(): key for key in (*PEER_KEYS, *DECORATED)}
SYSTEMS = ("mailflow", "postfix", "mailman")
NAMES = {"mailflow": "MailFlow", "postfix": "Postfix", "mailman": "Mailman"}
LABELS = {**NAMES, "plain": "MailFlow plain"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description="Scenarios A, B, C, E and F against MailFlow, a private Postfix and "
                    "GNU Mailman 3, side by side.")
    parser.add_argument("--scenario", type=str.upper,
                        choices=[*SCENARIO_CHOICES, "DECO", "ALL"], default="ALL",
                        help="A, B, C, E, F, B+deco, F+deco (issue 12: MailFlow's list "
                             "decorated and DKIM-signing, next to MailFlow plain and "
                             "Postfix plain), deco (both) or all (default)")
    parser.add_argument("--runs", type=int, default=3, help="runs per system (default 3)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiplier for message and member counts (default 1.0)")
    parser.add_argument("--mailman-e-scale", type=float, default=1.0,
                        help="Mailman's E at this fraction of E's members (default 1.0)")
    parser.add_argument("--no-mailman", action="store_true",
                        help="MailFlow and Postfix only")
    write = parser.add_mutually_exclusive_group()
    write.add_argument("--write-results", dest="write", action="store_true", default=None)
    write.add_argument("--no-write", dest="write", action="store_false")
    parser.add_argument("--sink", choices=["auto", "smtp-sink"], default="auto",
                        help="always Postfix's smtp-sink (needed for the peers)")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--timeout-factor", type=float, default=1.0)
    args = checked_args(parser, argv)
    if not 0 < args.mailman_e_scale <= 1:
        parser.error("--mailman-e-scale must be in (0, 1]")
    return args


# -- one scenario, three systems ----------------------------------------------------------

def mailflow_once(key: str, options: Options) -> dict[str, Any]:
    """One run of MailFlow in scenario ``key`` (``B+deco``: B with ``decorated``)."""
    if key in DECORATED:
        key, options = DECORATED[key], Options(**{**vars(options), "decorated": True})
    result = run_scenario(key, options)
    (run,) = result.runs
    return {"value": run.value, "rss_mb": round(run.rss_mb, 1), "params": result.params,
            **run.details}


def summary_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and runs of one system in one scenario (C: p99 too)."""
    record: dict[str, Any] = {"median": statistics.median(r["value"] for r in runs),
                              "runs": [r["value"] for r in runs],
                              "rss_peak_mb": max(r["rss_mb"] for r in runs), "details": runs}
    if "p99_ms" in runs[0]:
        record["p99_median"] = statistics.median(r["p99_ms"] for r in runs)
    return record


def run_peers(key: str, options: Options, runs: int,
              systems: dict[str, Callable[[Options], dict[str, Any]]],
              mailman_note: str | None) -> dict[str, Any]:
    """``runs`` runs of each system, alternating; Mailman's failure becomes its cell."""
    title, unit, _ = SCENARIOS[DECORATED.get(key, key)]
    if key in DECORATED:
        title += ", decorated"
    done: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
    mailman_error = mailman_note
    for number in range(1, runs + 1):
        for name, run in systems.items():
            if name == "mailman" and mailman_error:
                continue
            try:
                done[name].append(run(options))
            except (BenchError, SinkError) as exc:
                if name != "mailman":
                    raise
                mailman_error = f"failed: {str(exc).splitlines()[0][:300]}"
                print(f"  {key}: Mailman {mailman_error}\n{exc}", file=sys.stderr)
        shown = ", ".join(f"{LABELS[n]} {done[n][-1]['value']:,.1f}" for n in systems
                          if len(done[n]) == number)
        print(f"  {key} run {number}/{runs}: {shown} {unit}", file=sys.stderr, flush=True)
    result: dict[str, Any] = {"title": title, "unit": unit,
                              "params": done["mailflow"][0].pop("params")}
    for run_ in done["mailflow"][1:]:
        run_.pop("params", None)
    for name in (*SYSTEMS, "plain"):
        if name in done and done[name] and not (name == "mailman" and mailman_error):
            result[name] = summary_of(done[name])
        elif name == "mailman":
            result[name] = {"error": mailman_error or "not run"}
    return result


# -- the table ----------------------------------------------------------------------------

def cell(key: str, record: dict[str, Any] | None, unit: str) -> str:
    if record is None:
        return "not run"
    if "error" in record:
        return f"not measured: {record['error']}"
    text = (f"p50 {record['median']:,.1f} ms, p99 {record['p99_median']:,.1f} ms" if key == "C"
            else f"{record['median']:,.0f} {unit}")
    if record.get("note"):
        text += f" ({record['note']})"
    return text


def ratio(mailflow: dict[str, Any], other: dict[str, Any] | None) -> str:
    if not other or "error" in other:
        return "n/a"
    value = mailflow["median"] / other["median"]
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def runs_text(key: str, record: dict[str, Any] | None) -> str:
    if not record or "error" in record:
        return "-"
    digits = ".1f" if key == "C" else ",.0f"
    return " / ".join(format(v, digits) for v in record["runs"])


def side_by_side(results: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["Scenario", "Workload", "MailFlow (median)", "Postfix (median)",
              "Mailman (median)", "MailFlow / Postfix", "MailFlow / Mailman",
              "Peak RSS MailFlow / Postfix / Mailman", "Runs MailFlow; Postfix; Mailman"]
    table = []
    for key, r in results.items():
        unit = r["unit"]
        systems = [r.get(name) for name in SYSTEMS]
        rss = " / ".join("-" if not s or "error" in s else f"{s['rss_peak_mb']:,.0f} MB"
                         for s in systems)
        table.append([
            f"{key} {r['title']}", workload(key, r["params"]),
            *(cell(key, s, unit) for s in systems),
            ratio(r["mailflow"], r.get("postfix")), ratio(r["mailflow"], r.get("mailman")),
            rss, "; ".join(runs_text(key, s) for s in systems)])
    return header, table


def workload(key: str, params: dict[str, Any]) -> str:
    if key in DECORATED:
        base = report.WORKLOAD[DECORATED[key]].format(**params)
        return DECORATED_WORKLOAD[key].format(base=base)
    return report.WORKLOAD[key].format(**params)


def cpu_per_delivery(record: dict[str, Any] | None) -> str:
    """The median over runs of the relay's (and its child's) CPU per delivery."""
    if not record or "error" in record:
        return "-"
    values = [r["relay_cpu_ms_per_delivery"] for r in record["details"]
              if "relay_cpu_ms_per_delivery" in r]
    return f"{statistics.median(values):.3f} ms" if values else "-"


def decoration_table(results: dict[str, dict[str, Any]]
                     ) -> tuple[list[str], list[list[str]]]:
    """The decorated variants next to MailFlow plain and Postfix plain (issue 12)."""
    header = ["Scenario", "MailFlow plain", "MailFlow decorated", "Postfix plain",
              "decorated / Postfix", "decorated / plain",
              "Relay CPU per delivery plain / decorated",
              "Peak RSS plain / decorated / Postfix", "Runs plain; decorated; Postfix"]
    table = []
    for key, r in results.items():
        if key not in DECORATED:
            continue
        unit, plain, deco, postfix = r["unit"], r.get("plain"), r["mailflow"], r.get("postfix")
        rss = " / ".join("-" if not x or "error" in x else f"{x['rss_peak_mb']:,.0f} MB"
                         for x in (plain, deco, postfix))
        table.append([
            f"{key} {r['title']}", cell(key, plain, unit), cell(key, deco, unit),
            cell(key, postfix, unit), ratio(deco, postfix),
            ratio(deco, plain), f"{cpu_per_delivery(plain)} / {cpu_per_delivery(deco)}",
            rss, "; ".join(runs_text(key, x) for x in (plain, deco, postfix))])
    return header, table


METHOD = """\
How each system is measured (all three in one invocation, run after run, each run on a \
fresh instance and a fresh `smtp-sink` on 127.0.0.1, with the same messages, counts, \
sender and members; start is always `time.time()` before the first command of the first \
message):

- **MailFlow** as in the tables above (its own delivery stamps in the store, and for C the \
sink's close stamps as for the peers; peak RSS is the relay process's `VmHWM` plus its \
child process's: the egress and the listeners).
- **Postfix** (`bench/postfix_peer.py`): a private instance \
(`mailflow.testing.postfix.PostfixInstance`, loopback only) with \
`virtual_alias_domains = bench.test`, a `texthash` `virtual_alias_maps` expanding the \
alias or list address to the same members as MailFlow (`virtual_alias_expansion_limit` \
raised to the member count, `virtual_alias_recursion_limit` raised; a list over 1,000 \
members in two levels of up to 1,000 addresses, because Postfix's cleanup parses one \
alias value in quadratic time: a flat 100,000-address entry took it 195 s before the post \
was even accepted), `transport_maps` \
sending `sink.test` to `smtp:[127.0.0.1]:SINKPORT`, `smtp_destination_recipient_limit = \
50` (1 for F), otherwise Postfix defaults (up to 20 parallel connections to the sink; \
MailFlow uses 8). The maillog has whole-second timestamps, so for A, B, E and F it is \
followed every 10 ms and the end is `time.time()` when the last expected `status=sent` \
line appeared (at most ~10 ms late); completion is `postqueue -j` empty, then exactly one \
`status=sent` line per delivery (none deferred or bounced) and the sink's transaction \
count are checked. For C the sink runs as `smtp-sink -d` (one file per transaction) and a \
post's arrival is when the sink closed the file with its 10 recipients (an inotify \
watch in the benchmark, `bench/arrivals.py`: file modification times are coarse on this \
kernel and came out up to ~4 ms early). Peak RSS \
is the largest sum of `VmRSS` over the master and all its children, sampled every 100 ms \
(shared pages count once per process: an upper bound).
- **GNU Mailman** (`bench/mailman_peer.py`, in its own virtualenv `.venv-mailman` from \
`bench/mailman-requirements.txt`): a private core per run with SQLite, \
`[mta] incoming: mailman.mta.null.NullMTA`, the LMTP runner on a loopback port (posts \
go in by LMTP: A through `bench/loadgen.py --protocol lmtp` over 8 connections; Mailman \
has no aliases, so A's alias is a one-member list), SMTP out to the sink with \
`max_recipients: 50` (Mailman's default is 10), the `rest`, `archive` and `digest` \
runners not started, otherwise Mailman's defaults (one instance per runner, waking every \
second). Lists are made before the start with Mailman's API \
(`bench/mailman_admin.py`): non-members' posts accepted, no DMARC mitigation, no archive, \
no digests, no notices, `personalize = individual` for F only (one transaction per \
recipient). The end is when the sink closed the last of its transaction files \
(`smtp-sink -d`, stamped by the inotify watch) once the sink has every expected recipient (counted \
from the files' `X-Rcpt-Args:` lines, none missing or extra) and finished every \
transaction; no message may land in Mailman's `shunt` or `bad` queue. Peak RSS is the \
largest sum of `VmRSS` over the master and its runners, sampled every 100 ms. The \
master is stopped (SIGTERM, then SIGKILL to its process group) after every run.

Ratios are MailFlow's median divided by the peer's: above 1 means MailFlow is faster \
for A, B, E and F (deliveries or messages per second); for C (milliseconds) below 1 means \
MailFlow is faster.

B+deco and F+deco (issue 12) are B and F with MailFlow's list decorated as `python -m \
bench.run --decorated` sets it up: subject prefix `[bench]`, a footer template naming the \
list, the member's address (in a copy for one member) and the unsubscribe URL, a public \
URL, and a 2048-bit DKIM key for the domain made as `mailflow dkim keygen` makes it; F+deco \
also personalized (each member's own footer, RFC 8058 one-click token and VERP envelope \
sender, so each copy is signed on its own). Postfix relays B and F plain (no signing): the \
comparison issue 12 asks for. MailFlow plain runs in the same rotation, so the table of \
the decorated variants also says what the decoration costs MailFlow itself; relay CPU \
per delivery is the relay's and its child process's CPU time over the run, per delivery."""


def markdown_section(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    header, table = side_by_side(results)
    lines = [
        "<!-- peers -->",
        "## Side by side with Postfix and GNU Mailman",
        "",
        "Written by `make bench-peers` (`.venv/bin/python -m bench.peers`); `make bench` "
        "keeps this section.",
        "",
        f"- Date: {meta['date']}; relay code: git {meta['code']}; Postfix {meta['postfix']}; "
        f"GNU Mailman {meta['mailman']}",
        f"- Reproduce: `{meta['command']}`; median of {meta['runs']} run(s) per system, "
        "the systems' runs alternating in one invocation",
        f"- Machine: {machine_info.summary(meta['machine'])}",
        f"- Sink: {meta['sink']}",
        "",
        report.markdown_table(header, table),
        "",
        *deco_lines(results),
        METHOD,
        "<!-- /peers -->",
    ]
    return "\n".join(lines)


def deco_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    header, table = decoration_table(results)
    if not table:
        return []
    return ["Decorated variants (issue 12), each next to MailFlow plain and Postfix plain "
            "in the same rotation:", "", report.markdown_table(header, table), ""]


def write_section(section: str, md_path: Path = report.RESULTS_MD) -> None:
    """Put ``section`` in RESULTS.md: replace the old one, else before the keep block."""
    report.write_section(section, report.PEERS, md_path)


def postfix_version() -> str:
    try:
        out = subprocess.run(["/usr/sbin/postconf", "-d", "-h", "mail_version"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out or "unknown"


# -- the command --------------------------------------------------------------------------

def systems_for(key: str, args: argparse.Namespace, options: Options
                ) -> dict[str, Callable[[Options], dict[str, Any]]]:
    if key in DECORATED:  # Postfix relays plain; MailFlow plain in the same rotation
        base = DECORATED[key]
        return {"plain": lambda o: mailflow_once(base, o),
                "mailflow": lambda o: mailflow_once(key, o),
                "postfix": POSTFIX_SCENARIOS[base]}
    systems: dict[str, Callable[[Options], dict[str, Any]]] = {
        "mailflow": lambda o: mailflow_once(key, o), "postfix": POSTFIX_SCENARIOS[key]}
    if args.no_mailman:
        return systems
    mailman = MAILMAN_SCENARIOS[key]
    if key == "E" and args.mailman_e_scale < 1:
        smaller = Options(**{**vars(options), "scale": options.scale * args.mailman_e_scale})
        systems["mailman"] = lambda _o: mailman(smaller)
    else:
        systems["mailman"] = mailman
    return systems


def e_note(args: argparse.Namespace, options: Options) -> str | None:
    if args.no_mailman or args.mailman_e_scale >= 1:
        return None
    members = max(10, round(100_000 * options.scale * args.mailman_e_scale))
    return f"at {members:,} members, not {options.size(100_000, minimum=10):,}"


def measure(keys: list[str], args: argparse.Namespace, options: Options
            ) -> dict[str, dict[str, Any]]:
    problem = None if args.no_mailman else mailman_problem()
    if problem:
        print(f"bench.peers: Mailman not measured: {problem}", file=sys.stderr)
    results: dict[str, dict[str, Any]] = {}
    for key in keys:
        print(f"{key} ({SCENARIOS[DECORATED.get(key, key)][0]}) ...", file=sys.stderr,
              flush=True)
        systems = systems_for(key, args, options)
        result = run_peers(key, options, args.runs, systems,
                           "compared with Postfix only" if key in DECORATED else problem)
        note = e_note(args, options) if key == "E" else None
        if note and "error" not in result.get("mailman", {"error": ""}):
            result["mailman"]["note"] = note
        if args.no_mailman:
            result.pop("mailman", None)
        results[key] = result
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = postfix_problem()
    if problem:
        print(f"bench.peers: error: {problem}", file=sys.stderr)
        return 2
    try:
        sink_kind, sink_binary = resolve_kind("smtp-sink")
    except SinkError as exc:
        print(f"bench.peers: error: {exc}", file=sys.stderr)
        return 2
    keys = ([*PEER_KEYS, *DECORATED] if args.scenario == "ALL" else list(DECORATED)
            if args.scenario == "DECO" else [SCENARIO_CHOICES[args.scenario]])
    options = Options(runs=1, scale=args.scale, sink_kind=sink_kind, sink_binary=sink_binary,
                      data_root=args.data_root, timeout_factor=args.timeout_factor,
                      log=lambda line: None)
    sink_name = f"Postfix smtp-sink ({sink_binary})"
    machine = machine_info.describe(args.data_root or Path(tempfile.gettempdir()))
    given = shlex.join(sys.argv[1:] if argv is None else argv)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "code": code_version(), "postfix": postfix_version(),
            "mailman": "not measured" if args.no_mailman or mailman_problem()
            else mailman_version(), "runs": args.runs,
            "command": f"make bench-peers BENCH_ARGS={shlex.quote(given)}" if given
            else "make bench-peers", "machine": machine, "sink": sink_name}
    print(f"MailFlow vs Postfix {meta['postfix']} vs GNU Mailman {meta['mailman']}: "
          f"scenario(s) {', '.join(keys)}, {args.runs} run(s) each, scale {args.scale:g}, "
          f"sink {sink_name}", file=sys.stderr)
    try:
        results = measure(keys, args, options)
    except (BenchError, SinkError, PostfixError) as exc:
        print(f"bench.peers: FAILED: {exc}", file=sys.stderr)
        return 2
    header, table = side_by_side(results)
    print()
    print(f"MailFlow vs Postfix {meta['postfix']} vs GNU Mailman {meta['mailman']}, median "
          f"of {args.runs} run(s) each; machine: {machine_info.summary(machine)}")
    print(report.plain_table(header, table))
    deco_header, deco_table = decoration_table(results)
    if deco_table:
        print("\nDecorated variants (issue 12) next to MailFlow plain and Postfix plain:")
        print(report.plain_table(deco_header, deco_table))
    if args.write:
        PEERS_JSON.write_text(json.dumps({"meta": meta, "results": results}, indent=2,
                                         sort_keys=True) + "\n")
        write_section(markdown_section(results, meta))
        print(f"\nwrote {report.RESULTS_MD} (section 'Side by side with Postfix and GNU "
              f"Mailman') and {PEERS_JSON}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
