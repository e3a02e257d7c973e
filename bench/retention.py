"""Does a SQLite store stay bounded under continuous load? (issue 15, part 7)

A relay with a short ``message_retention`` takes scenario A's load (2 KB messages to a
one-member alias over 8 connections) round after round for ``--seconds``; after each
round the database file and its WAL are measured.  With retention working, the size
levels off once the first messages are purged: the last third of the samples is no
larger than the peak of the first two thirds (plus a margin).  Without it the file
grows with every round.

    python -m bench.retention --seconds 120 --retention 10

Writes a section of bench/RESULTS.md with ``--write``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from bench import report as results
from bench.machine import describe, summary
from bench.scenarios import LOADGEN, MESSAGE_SIZE, SENDER, Options, _list_setup, harness
from bench.sinks import find_smtp_sink
from mailflow.model import ListKind

SECTION = re.compile(r"<!-- retention -->.*?<!-- /retention -->", re.S)
ALIAS, TARGET = "ingest@bench.test", "rcpt@sink.test"
ROUND = 2000  # messages per load generator run
MARGIN = 1.10


def store_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.glob("mailflow.db*") if p.is_file())


def run(seconds: float, retention: float, round_size: int = ROUND,
        max_rounds: int = 10_000) -> dict[str, object]:
    binary = find_smtp_sink()
    options = Options(runs=1, sink_kind="smtp-sink" if binary else "python", sink_binary=binary)
    settings = {"MAILFLOW_MESSAGE_RETENTION": str(retention),
                "MAILFLOW_MAINTENANCE_INTERVAL": "1", "MAILFLOW_BLOB_RETENTION": "0"}
    samples: list[tuple[float, int, int]] = []  # (elapsed s, messages sent, bytes)
    with harness(options, _list_setup(ALIAS, ListKind.ALIAS, [TARGET]), settings) as h:
        start, sent = time.monotonic(), 0
        rounds = 0
        while rounds < max_rounds and (not rounds or time.monotonic() - start < seconds):
            rounds += 1
            command = [sys.executable, str(LOADGEN), "--port", str(h.relay.smtp_port),
                       "--count", str(round_size), "--connections", "8",
                       "--size", str(MESSAGE_SIZE), "--mail-from", SENDER, "--rcpt", ALIAS]
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
            result = json.loads(done.stdout)
            if result["refused"] or result["sent"] != round_size:
                raise SystemExit(f"the relay refused mail: {result['first_error']}\n"
                                 f"{h.log_tail()}")
            sent += round_size
            samples.append((round(time.monotonic() - start, 1), sent,
                            store_bytes(h.relay.data_dir)))
        h.check_alive()
    cut = max(1, len(samples) * 2 // 3)
    early_peak = max(b for _, _, b in samples[:cut])
    late_peak = max(b for _, _, b in samples[cut:]) if samples[cut:] else early_peak
    return {"seconds": seconds, "retention": retention, "messages": sent,
            "samples": samples, "early_peak": early_peak, "late_peak": late_peak,
            "bounded": late_peak <= early_peak * MARGIN}


def markdown(result: dict[str, object]) -> str:
    samples = result["samples"]
    assert isinstance(samples, list)
    mb = 1e6
    rows = "\n".join(f"| {t} | {n:,} | {b / mb:,.1f} |" for t, n, b in samples)
    early, late = result["early_peak"], result["late_peak"]
    assert isinstance(early, int) and isinstance(late, int)
    verdict = "bounded" if result["bounded"] else "**still growing**"
    return (
        "<!-- retention -->\n## Issue 15: a SQLite store under continuous load\n\n"
        f"Machine: {summary(describe(Path.cwd()))}.\n"
        f"Command: `python -m bench.retention --seconds {result['seconds']} --retention "
        f"{result['retention']}` (`message_retention` {result['retention']} s, "
        f"`maintenance_interval` 1 s, scenario A's 2 KB messages in rounds of {ROUND:,} "
        "over 8 connections).\n\n"
        f"{result['messages']:,} messages: the database and its WAL peaked at "
        f"{early / mb:,.1f} MB in the first two thirds of the run and at {late / mb:,.1f} MB "
        f"in the last third: {verdict}.\n\n"
        "| elapsed s | messages sent | mailflow.db + WAL, MB |\n|---|---|---|\n" + rows
        + "\n<!-- /retention -->")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--retention", type=float, default=10.0,
                        help="message_retention of the relay, seconds")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args(argv)
    result = run(args.seconds, args.retention)
    text = markdown(result)
    print(text)
    if args.write:
        results.write_section(text, SECTION)
    return 0 if result["bounded"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
