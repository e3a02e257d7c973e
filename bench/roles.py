"""Split roles on one PostgreSQL (issue 15, part 2): ``python -m bench.roles``
(``make bench-roles``).

B (five posts to a 10,000-member list) and E (one post to a 100,000-member list), each
with one ``--role ingress`` relay and 1 or 2 ``--role worker`` relays on a database of
their own, with every body in the blob store (``max_body_in_database=0``) on a folder
all of them share, or on S3 (moto in server mode on loopback).  Per run: deliveries per
second (first SMTP command of the first post to the last delivery's ``updated_at``),
CPU seconds per 1,000 deliveries of each role (``/proc``: the relay process and its
child), and PostgreSQL's commits per second over the run (``pg_stat_database`` of the
run's own database, so no other client is counted).

Then the store alone: ``claim``, the claim-and-record round trip a worker makes, by 1,
2 and 4 threads against 20,000 due deliveries (batches of 1,000, and of 50), with no
network nor egress: what one PostgreSQL carries (claim rounds, i.e. commits, per
second and deliveries per second), from which docs/scaling.md works out the number of
workers and databases a load needs.

Both workers share this machine's cores with the ingress, PostgreSQL, moto and the sink:
a second worker shows the cost per delivery and what coordination costs, not scaling.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bench.loadgen import make_message, send_one
from bench.machine import describe, summary
from bench.report import write_section
from bench.sinks import start_sink
from mailflow.model import DeliveryStatus, Outcome
from mailflow.store import Repository, create_engines, upgrade_to_head
from mailflow.testing.relay import RelayProcess

ADMIN_URL = os.environ.get("MAILFLOW_BENCH_POSTGRES_URL",
                           "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
DOMAIN = "bench.test"
SENDER = "sender@example.org"
SIZE = 2048
CLK_TCK = os.sysconf("SC_CLK_TCK")
SECTION = re.compile(r"<!-- roles -->.*?<!-- /roles -->", re.S)


@dataclass
class RunFigures:
    scenario: str
    blobs: str
    workers: int
    deliveries: int
    per_second: float
    ingress_cpu_ms: float  # CPU ms per 1,000 deliveries
    worker_cpu_ms: float   # all workers together, per 1,000 deliveries
    commits_per_s: float


# -- a database of its own per run ---------------------------------------------------------

@contextmanager
def fresh_database() -> Iterator[str]:
    """A new database on the server of ``ADMIN_URL``, dropped afterwards: its statistics
    are the run's alone."""
    name = f"mf_bench_{secrets.token_hex(4)}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def commits(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            return int(conn.execute(text(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            )).scalar_one())
    finally:
        engine.dispose()


def cpu_seconds(relay: RelayProcess) -> float:
    total = 0
    for pid in relay.processes():
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


# -- B and E with split roles ---------------------------------------------------------------

def run_roles(scenario: str, blobs: str, workers: int, scale: float, moto: Any,
              sink_kind: str, sink_binary: str | None, root: Path) -> RunFigures:
    posts, members = (5, max(10, round(10_000 * scale))) if scenario == "B" else \
        (1, max(10, round(100_000 * scale)))
    expected = posts * members
    address = f"{scenario.lower()}@{DOMAIN}"
    sink = start_sink(sink_kind, sink_binary)
    with fresh_database() as url, tempfile.TemporaryDirectory(dir=root) as tmp:
        shared = Path(tmp) / "shared-blobs"
        shared.mkdir()
        common = {"MAILFLOW_EGRESS": "smtp", "MAILFLOW_SMTP_RELAY": sink.url,
                  "MAILFLOW_LOG_LEVEL": "WARNING", "MAILFLOW_MAX_BODY_IN_DATABASE": "0",
                  "MAILFLOW_HTTP_LISTEN": "off"}
        if blobs == "s3":
            bucket = f"roles-{secrets.token_hex(4)}"
            moto.client("s3").create_bucket(Bucket=bucket)
            common.update({**moto.env, "MAILFLOW_BLOB_URL": f"s3://{bucket}/mail"})
        else:  # one folder every node mounts (here: a symlink in each data directory)
            common["MAILFLOW_SHARED_BLOBS"] = "true"
        relays = [RelayProcess(Path(tmp) / "ingress", database_url=url, forked=False,
                               settings={**common, "MAILFLOW_ROLE": "ingress"}, http=False)]
        relays += [RelayProcess(Path(tmp) / f"worker{n}", database_url=url, forked=False,
                                settings={**common, "MAILFLOW_ROLE": "worker",
                                          "MAILFLOW_HOSTNAME": f"worker{n}.bench.test"},
                                smtp=False, http=False) for n in range(workers)]
        for relay in relays:
            relay.data_dir.mkdir(parents=True)
            (relay.data_dir / "blobs").symlink_to(shared)
        ingress = relays[0]
        ingress.init()
        with ingress.repository() as repo:
            now = time.time()
            repo.add_domain(DOMAIN, now)
            repo.create_list(address, _list_kind(), scenario, 0, now)
            repo.add_members(address, [f"m{i:06d}@sink.test" for i in range(members)], now)
        try:
            for relay in relays:
                relay.start(timeout=60)
            cpu_before = [cpu_seconds(r) for r in relays]
            commits_before = commits(url)
            client = _client(ingress)
            start = time.time()
            for n in range(posts):
                code, reply = send_one(client, SENDER, [address],
                                       make_message(n, SIZE, SENDER, address, scenario))
                if code != 250:
                    raise SystemExit(f"post refused: {code} {reply}")
            client.quit()
            last = _wait_delivered(url, expected, timeout=120 + expected / 100)
            time.sleep(1.0)  # PostgreSQL's statistics are flushed about once a second
            commits_after = commits(url)
            cpu = [cpu_seconds(r) - b for r, b in zip(relays, cpu_before, strict=True)]
        finally:
            for relay in relays:
                relay.stop()
            sink.stop()
    elapsed = last - start
    return RunFigures(scenario, blobs, workers, expected, expected / elapsed,
                      cpu[0] / expected * 1e6, sum(cpu[1:]) / expected * 1e6,
                      (commits_after - commits_before) / elapsed)


def _list_kind() -> Any:
    from mailflow.model import ListKind

    return ListKind.LIST


def _client(relay: RelayProcess) -> Any:
    import smtplib

    client = smtplib.SMTP("127.0.0.1", relay.smtp_port, local_hostname="bench.test",
                          timeout=60)
    client.ehlo()
    return client


def _wait_delivered(url: str, expected: int, timeout: float) -> float:
    """When the last of ``expected`` deliveries was delivered (its ``updated_at``)."""
    engine = create_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as conn:
                total, delivered, last, other = conn.execute(text(
                    "SELECT count(*), count(*) FILTER (WHERE status = 'delivered'), "
                    "max(updated_at) FILTER (WHERE status = 'delivered'), "
                    "count(*) FILTER (WHERE status IN ('deferred', 'failed')) "
                    "FROM deliveries")).one()
            if other:
                raise SystemExit(f"{other} deliveries deferred or failed")
            if total >= expected and delivered == total:
                return float(last)
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out: {delivered} of {expected} delivered")
            time.sleep(0.05)
    finally:
        engine.dispose()


# -- the store alone: claims and commits per second -------------------------------------------

def claim_capacity(threads: int, batch: int, total: int) -> tuple[float, float]:
    """(claim rounds per second, deliveries per second) of ``threads`` claimers, each
    recording the outcomes of its previous claim in the same transaction (as the
    scheduler's keeper does), over ``total`` due deliveries."""
    with fresh_database() as url:
        engines = create_engines(url, pool_size=threads + 1)
        upgrade_to_head(engines.writer)
        repo = Repository(engines)
        now = time.time()
        repo.add_domain(DOMAIN, now)
        repo.create_list(f"cap@{DOMAIN}", _list_kind(), "cap", 0, now)
        with engines.writer.begin() as conn:
            conn.execute(text(
                "INSERT INTO messages (id, mail_from, rcpt_tos, blob, size, received_at, "
                "peer, helo, protocol, status, updated_at) VALUES ('m', '', '', 'b', 1, "
                ":now, '', '', 'ESMTP', 'queued', :now)"), {"now": now})
            conn.execute(text(
                "INSERT INTO deliveries (message_id, list_id, recipient, status, priority, "
                "attempts, due_at, created_at, updated_at) SELECT 'm', l.id, "
                "'r' || g || '@sink.test', 'queued', 0, 0, :now, :now, :now "
                "FROM generate_series(1, :n) g, lists l"), {"now": now, "n": total})
        rounds = [0] * threads

        def claimer(index: int) -> None:
            outcomes: list[Outcome] = []
            while True:
                claimed, _ = repo.record_and_claim(time.time(), outcomes, batch, 300.0,
                                                   f"cap{index}/{rounds[index]}")
                rounds[index] += 1
                outcomes = [Outcome(d.id, DeliveryStatus.DELIVERED, "250 ok",
                                    lease=d.lease_owner) for d in claimed]
                if not claimed:
                    return

        workers = [threading.Thread(target=claimer, args=(i,)) for i in range(threads)]
        began = time.monotonic()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed = time.monotonic() - began
        engines.dispose()
    return sum(rounds) / elapsed, total / elapsed


READING = """Reading it: deliveries/s is wall time on a shared machine, and with S3 it
includes moto, a Python server in the benchmark's own process on the same two cores,
answering each worker's GET of each body and the ingress's PUTs: the S3 rows' rate says
more about moto than about S3, their CPU columns are the relay's own cost. At a small
scale the fixed costs (the first S3 requests, a worker's start of its SMTP pool) weigh
on the per-delivery figures. The store-alone rows are client and server on the same
cores too; a database on its own host carries more. docs/scaling.md draws the sizing
from these figures."""


# -- report ---------------------------------------------------------------------------------

def section(runs: list[RunFigures], capacity: list[tuple[int, int, float, float]],
            command: str, scale: float, load: str) -> str:
    rows = "\n".join(
        f"| {r.scenario} | {r.blobs} | {r.workers} | {r.deliveries:,} | {r.per_second:,.0f} "
        f"| {r.ingress_cpu_ms:.0f} | {r.worker_cpu_ms:.0f} "
        f"| {r.commits_per_s:,.0f} |" for r in runs)
    cap_rows = "\n".join(f"| {t} | {b} | {rounds:,.0f} | {per_s:,.0f} |"
                         for t, b, rounds, per_s in capacity)
    return (
        "<!-- roles -->\n## Issue 15: split roles on one PostgreSQL (" +
        time.strftime("%Y-%m-%d", time.gmtime()) + ")\n\n"
        f"**Taken on a loaded machine** (other sessions' builds and tests ran at the same "
        f"time; load average {load}), at scale {scale:g}: read the figures as an order of "
        "magnitude, and the differences between rows as indicative only.\n"
        f"Machine: {summary(describe(Path.cwd()))}.\nCommand: `{command}`.\n\n"
        "One `--role ingress` relay and 1 or 2 `--role worker` relays, one PostgreSQL "
        "database of the run's own, every body in the blob store "
        "(`max_body_in_database=0`): a folder every node shares, or S3 (moto in server "
        "mode). CPU is microseconds per delivery (the relay process and its child, over the "
        "run; the workers' together); "
        "commits/s from `pg_stat_database` over the run. All on one 2-core machine: a "
        "second worker shows the cost per delivery and of coordination, not scaling.\n\n"
        "| scenario | blobs | workers | deliveries | deliveries/s | ingress CPU µs/delivery "
        "| workers' CPU µs/delivery | PG commits/s |\n|---|---|---|---|---|---|---|---|\n"
        + rows + "\n\n"
        "The store alone (`bench/roles.py`, `claim_capacity`): threads claiming due "
        "deliveries and recording the previous claim's outcomes in the same transaction, "
        "as each worker's queue keeper does; no network, no egress.\n\n"
        "| claimers | batch | claim rounds (commits)/s | deliveries/s |\n|---|---|---|---|\n"
        + cap_rows + "\n\n" + READING + "\n<!-- /roles -->")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.roles", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiplier for the list sizes (default 1)")
    parser.add_argument("--capacity-deliveries", type=int, default=20_000)
    parser.add_argument("--no-write", action="store_true",
                        help="only print (default: write bench/RESULTS.md)")
    parser.add_argument("--sink", choices=["smtp-sink", "python"], default="smtp-sink")
    args = parser.parse_args(argv)
    from bench.sinks import resolve_kind
    from mailflow.testing.aws import MotoServer

    sink_kind, sink_binary = resolve_kind(args.sink)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    runs: list[RunFigures] = []
    root = Path(tempfile.gettempdir())
    with MotoServer() as moto:
        for scenario in ("B", "E"):
            for blobs in ("shared folder", "s3"):
                for workers in (1, 2):
                    figures = run_roles(scenario, "s3" if blobs == "s3" else "files",
                                        workers, args.scale, moto, sink_kind, sink_binary,
                                        root)
                    figures.blobs = blobs
                    print(figures, file=sys.stderr, flush=True)
                    runs.append(figures)
    capacity = []
    for threads in (1, 2, 4):
        for batch in (1000, 50):
            rounds, per_s = claim_capacity(threads, batch, args.capacity_deliveries)
            print(f"claimers {threads} batch {batch}: {rounds:.0f} rounds/s, "
                  f"{per_s:.0f} deliveries/s", file=sys.stderr, flush=True)
            capacity.append((threads, batch, rounds, per_s))
    load = f"{load} at the start, " + ", ".join(f"{x:.1f}" for x in os.getloadavg()) + \
        " at the end"
    given = shlex.join(sys.argv[1:] if argv is None else argv)
    command = "make bench-roles" + (f" BENCH_ARGS={shlex.quote(given)}" if given else "")
    text_ = section(runs, capacity, command, args.scale, load)
    print(text_)
    if not args.no_write:
        write_section(text_, SECTION)
    print("median deliveries/s:", statistics.median(r.per_second for r in runs),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
