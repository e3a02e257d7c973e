"""REST API speed: ``python -m bench.api`` (issue 14).

Starts a relay (``mailflow serve``, as an executable) on SQLite, or on PostgreSQL with
``--database-url``, makes a site admin's token, and over real HTTP on loopback:

1. imports ``--members`` members (default 100,000) into one list as one CSV file
   (``POST /api/v1/lists/{address}/members/import``) and times it, end to end (the
   upload, every row validated, the insert, the report);
2. walks the roster with ``GET /api/v1/lists/{address}/members`` (``--limit`` per page,
   default 50), following ``next_cursor``, for ``--pages`` pages spread over the whole
   roster (every ``n``-th page's cursor is taken from the walk) and reports the latency
   of each request (p50, p95, max), one request at a time;
3. reports, without a target, the latency of a search (``q=``) that scans the roster.

Targets (issue 14): member pages p95 < 50 ms, the import < 10 s.  Exit status 1 if one
is missed.  ``--json`` prints the figures as JSON as well.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.machine import describe, summary
from mailflow.services.access import AccessService
from mailflow.store import create_cli_engines
from mailflow.store.access import AccessRepository
from mailflow.testing.relay import RelayProcess

LIST = "big@bench.test"
PAGE_TARGET_MS = 50.0
IMPORT_TARGET_S = 10.0


def member_csv(count: int) -> bytes:
    out = io.StringIO()
    out.write("email,name\n")
    for i in range(count):
        out.write(f"member{i:07d}@example{i % 97}.net,Member {i}\n")
    return out.getvalue().encode()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def timed_get(http: httpx.Client, path: str, params: dict[str, object]) -> tuple[float, dict]:  # type: ignore[type-arg]
    started = time.perf_counter()
    response = http.get(path, params=params)
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    return elapsed, response.json()


def run(members: int, pages: int, limit: int, database_url: str, folder: Path
        ) -> dict[str, object]:
    relay = RelayProcess(folder / "relay", database_url=database_url, forked=False,
                         settings={"MAILFLOW_EGRESS": "stdout"})
    relay.init()
    engines = create_cli_engines(relay.database_url)
    try:
        access = AccessService(AccessRepository(engines))
        access.store.add_user("bench@bench.test", "not-a-hash-nobody-logs-in", True, 0.0)
        token = access.create_token("bench@bench.test")[1]
    finally:
        engines.dispose()
    relay.start()
    try:
        base = f"http://127.0.0.1:{relay.http_port}/api/v1"
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base, headers=headers, timeout=120) as http:
            http.post("/domains", json={"name": "bench.test"}).raise_for_status()
            http.post("/lists", json={"address": LIST}).raise_for_status()
            body = member_csv(members)
            started = time.perf_counter()
            report = http.post(f"/lists/{LIST}/members/import", content=body,
                               headers={"Content-Type": "text/csv"})
            import_s = time.perf_counter() - started
            report.raise_for_status()
            assert report.json()["added"] == members and not report.json()["errors"], \
                report.text[:500]

            # One walk through the roster, every page timed; then ``pages`` of them.
            path = f"/lists/{LIST}/members"
            for _ in range(20):  # warm-up: connections, caches, the planner
                timed_get(http, path, {"limit": limit})
            latencies: list[float] = []
            cursor: str | None = None
            every = max(1, (members // limit) // pages)
            seen = page_number = 0
            while True:
                params: dict[str, object] = {"limit": limit}
                if cursor:
                    params["cursor"] = cursor
                elapsed, page = timed_get(http, path, params)
                if page_number % every == 0:
                    latencies.append(elapsed)
                seen += len(page["items"])
                page_number += 1
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert seen == members, (seen, members)
            searches = [timed_get(http, path, {"limit": limit, "q": f"member{i:03d}9"})[0]
                        for i in range(20)]
    finally:
        relay.stop()
    return {
        "backend": "postgresql" if database_url else "sqlite",
        "members": members, "limit": limit, "pages_walked": page_number,
        "pages_timed": len(latencies),
        "import_s": round(import_s, 2),
        "import_rows_per_s": round(members / import_s),
        "page_p50_ms": round(statistics.median(latencies), 2),
        "page_p95_ms": round(percentile(latencies, 0.95), 2),
        "page_max_ms": round(max(latencies), 2),
        "search_p50_ms": round(statistics.median(searches), 1),
        "search_p95_ms": round(percentile(searches, 0.95), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--pages", type=int, default=500, help="pages timed")
    parser.add_argument("--limit", type=int, default=50, help="members per page")
    parser.add_argument("--database-url", default="",
                        help="PostgreSQL URL (default: SQLite in a temporary folder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mailflow-bench-api-") as folder:
        print(summary(describe(Path(folder))), file=sys.stderr)
        result = run(args.members, args.pages, args.limit, args.database_url, Path(folder))
    print(f"{result['backend']}: import of {args.members} rows {result['import_s']} s "
          f"({result['import_rows_per_s']} rows/s); member pages of {args.limit}: "
          f"p50 {result['page_p50_ms']} ms, p95 {result['page_p95_ms']} ms, "
          f"max {result['page_max_ms']} ms ({result['pages_timed']} of "
          f"{result['pages_walked']} pages); search p50 {result['search_p50_ms']} ms, "
          f"p95 {result['search_p95_ms']} ms")
    if args.json:
        print(json.dumps(result, indent=2))
    met = (float(result["page_p95_ms"]) < PAGE_TARGET_MS  # type: ignore[arg-type]
           and float(result["import_s"]) < IMPORT_TARGET_S)  # type: ignore[arg-type]
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
