"""MailFlow side by side with Postfix: ``python -m bench.peers [options]`` (``make bench-peers``).

Runs scenarios A (ingest) and B (fan-out) twice per run: once against MailFlow exactly as
``bench.run`` does, once against a private Postfix in the same relay role, and prints
both medians with their ratio.  At ``--scale 1`` the table goes into its own section of
``bench/RESULTS.md`` (between ``<!-- peers -->`` markers, which ``make bench`` keeps)
unless ``--no-write`` is given, and the runs into ``bench/peers.json``.

The Postfix relay.  :class:`mailflow.testing.postfix.PostfixInstance` (its own
configuration, queue and maillog in a temporary folder; smtpd on a free loopback port;
needs root) with ``virtual_alias_domains = bench.test`` and a ``texthash``
``virtual_alias_maps`` that expands the alias or list address to the same members as
MailFlow's store holds (``virtual_alias_expansion_limit`` and
``virtual_alias_recursion_limit`` raised to fit), ``transport_maps`` sending the
members' domain to the same kind of sink (``smtp:[127.0.0.1]:PORT``) and
``smtp_destination_recipient_limit = 50`` (MailFlow's recipients per transaction).
Everything else is Postfix's default (e.g. up to 20 parallel connections to the sink,
where MailFlow uses 8); a fresh instance and a fresh sink for every run.

Timing.  Start is as for MailFlow (``time.time()`` before the first SMTP command of the
first message).  ``smtp-sink`` cannot timestamp arrivals and the maillog's timestamps
have whole seconds only, so a thread of this process follows the maillog every 10 ms
(reading only what was appended) and notes ``time.time()`` when each ``status=sent``
line appears; the end is when the last expected one appeared (at most ~10 ms late: a
conservative figure, as MailFlow's).  Completion is checked with ``postqueue -j``
(polled until the queue is empty), then the run checks that the maillog has exactly one
``status=sent`` line per expected delivery, none deferred or bounced, and that the sink
saw the expected number of transactions.

Exit status: 0 when every run completed, 2 when one could not.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import machine as machine_info
from bench import report
from bench.loadgen import make_message, send_one
from bench.run import checked_args, code_version
from bench.scenarios import (
    DOMAIN,
    LOADGEN,
    MESSAGE_SIZE,
    SCENARIOS,
    SENDER,
    BenchError,
    Options,
    run_scenario,
)
from bench.sinks import PostfixSink, PythonSink, SinkError, resolve_kind, start_sink
from mailflow.testing.postfix import PostfixError, PostfixInstance, postfix_problem

PEERS_JSON = report.HERE / "peers.json"
SENT = re.compile(r" status=sent ")
NOT_SENT = re.compile(r" status=(deferred|bounced|expired) .*")
POSTFIX_KEYS = ("A", "B")


class MaillogFollower:
    """Follows a maillog from a thread: when did each ``status=sent`` line appear."""

    def __init__(self, path: Path, interval: float = 0.010) -> None:
        self.path = path
        self.interval = interval
        self.sent = 0
        self.last_sent_at: float | None = None
        self.problems: list[str] = []
        self._offset = 0
        self._partial = b""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> MaillogFollower:
        try:
            self._offset = self.path.stat().st_size  # only what happens from now on
        except OSError:
            self._offset = 0
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.poll()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        with self._lock:
            try:
                with self.path.open("rb") as log:
                    log.seek(self._offset)
                    chunk = log.read()
            except OSError:
                return
            now = time.time()
            self._offset += len(chunk)
            lines = (self._partial + chunk).split(b"\n")
            self._partial = lines.pop()
            sent = 0
            for raw in lines:
                line = raw.decode(errors="replace")
                if SENT.search(line):
                    sent += 1
                elif NOT_SENT.search(line) and len(self.problems) < 5:
                    self.problems.append(line)
            if sent:
                self.sent += sent
                self.last_sent_at = now


def postfix_relay(sink_port: int, address: str, members: list[str],
                  data_root: Path | None) -> PostfixInstance:
    """A configured (not started) private Postfix expanding ``address`` to ``members``."""
    instance = PostfixInstance(base_dir=data_root)
    instance.main_settings({
        "virtual_alias_domains": DOMAIN,
        "virtual_alias_maps": instance.write_map("virtual", {address: ",".join(members)}),
        "virtual_alias_expansion_limit": str(max(1000, len(members) + 10)),
        "virtual_alias_recursion_limit": "1000",
        "transport_maps": instance.write_map(
            "transport", {"sink.test": f"smtp:[127.0.0.1]:{sink_port}"}),
        "smtp_destination_recipient_limit": "50",
        "message_size_limit": str(10 * 1024 * 1024),
    })
    return instance


def _wait_postfix(instance: PostfixInstance, follower: MaillogFollower, expected: int,
                  timeout: float) -> None:
    """Until the queue is empty and every expected ``status=sent`` line was seen."""
    deadline = time.monotonic() + timeout
    while True:
        if follower.problems:
            raise BenchError("Postfix did not deliver everything: "
                             + "; ".join(follower.problems[:3]))
        if follower.sent >= expected and not instance.queue():
            return
        if time.monotonic() >= deadline:
            raise BenchError(f"Postfix: {follower.sent} of {expected} deliveries after "
                             f"{timeout:.0f} s; queue {len(instance.queue())} message(s)\n"
                             f"{instance.log()[-3000:]}")
        time.sleep(0.2)


def _postfix_run(options: Options, address: str, members: list[str],
                 send: Callable[[int], tuple[float, dict[str, Any]]], expected: int,
                 transactions: tuple[int, int], timeout: float) -> dict[str, Any]:
    """One run against a fresh Postfix and sink; ``send(port)`` gives (start, details)."""
    sink: PostfixSink | PythonSink = start_sink(options.sink_kind, options.sink_binary)
    instance: PostfixInstance | None = None
    try:
        instance = postfix_relay(sink.port, address, members, options.data_root)
        instance.start()
        follower = MaillogFollower(instance.log_path).start()
        try:
            start, details = send(instance.smtp_port)
            _wait_postfix(instance, follower, expected, timeout * options.timeout_factor)
        finally:
            follower.stop()
        if follower.sent != expected or follower.last_sent_at is None:
            raise BenchError(f"Postfix logged {follower.sent} status=sent, expected {expected}")
        seen = sink.wait_transactions(transactions[0])
        if not transactions[0] <= seen <= transactions[1]:
            raise BenchError(f"the sink saw {seen} transaction(s) from Postfix, expected "
                             f"{transactions[0]}..{transactions[1]}")
        elapsed = follower.last_sent_at - start
        details.update({"delivered": follower.sent, "sink_transactions": seen,
                        "elapsed_s": round(elapsed, 4)})
        return {"value": expected / elapsed, **details}
    finally:
        if instance is not None:
            instance.stop()
            instance.remove()
        sink.stop()


def postfix_ingest(options: Options) -> dict[str, Any]:
    count = options.size(2000, minimum=8)
    connections = min(8, count)
    alias = f"ingest@{DOMAIN}"

    def send(port: int) -> tuple[float, dict[str, Any]]:
        command = [sys.executable, str(LOADGEN), "--port", str(port), "--count", str(count),
                   "--connections", str(connections), "--size", str(MESSAGE_SIZE),
                   "--mail-from", SENDER, "--rcpt", alias]
        limit = (60 + count / 20) * options.timeout_factor
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=limit)
            gen = json.loads(done.stdout)
        except (subprocess.TimeoutExpired, ValueError) as exc:
            raise BenchError(f"the load generator failed against Postfix: {exc}") from None
        if gen["refused"] or gen["sent"] != count:
            raise BenchError(f"Postfix accepted {gen['sent']} of {count} messages; first "
                             f"error: {gen['first_error']}")
        start = gen["first_send"]
        return start, {"accepted_per_s": round(count / (gen["last_reply"] - start), 1)}

    return _postfix_run(options, alias, ["rcpt@sink.test"], send, count, (count, count),
                        timeout=60 + count / 20)


def postfix_fanout(options: Options) -> dict[str, Any]:
    members = options.size(10_000, minimum=10)
    posts = 5
    address = f"fanout@{DOMAIN}"
    roster = [f"m{i:06d}@sink.test" for i in range(members)]
    expected = posts * members

    def send(port: int) -> tuple[float, dict[str, Any]]:
        messages = [make_message(i, MESSAGE_SIZE, SENDER, address, "fanout")
                    for i in range(posts)]
        client = smtplib.SMTP("127.0.0.1", port, local_hostname="bench.test", timeout=60)
        client.ehlo()
        start = time.time()
        try:
            for message in messages:
                code, text = send_one(client, SENDER, [address], message)
                if code != 250:
                    raise BenchError(f"Postfix refused a post: {code} {text}")
            accepted = time.time()
        finally:
            client.quit()
        return start, {"posts_accepted_after_s": round(accepted - start, 4)}

    return _postfix_run(options, address, roster, send, expected,
                        (posts * math.ceil(members / 50), expected),
                        timeout=60 + expected / 250)


POSTFIX_SCENARIOS: dict[str, Callable[[Options], dict[str, Any]]] = {
    "A": postfix_ingest, "B": postfix_fanout,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description="Scenarios A and B against MailFlow and a private Postfix, side by side.")
    parser.add_argument("--scenario", choices=["A", "B", "all", "a", "b"], default="all")
    parser.add_argument("--runs", type=int, default=3, help="runs per system (default 3)")
    parser.add_argument("--scale", type=float, default=1.0)
    write = parser.add_mutually_exclusive_group()
    write.add_argument("--write-results", dest="write", action="store_true", default=None)
    write.add_argument("--no-write", dest="write", action="store_false")
    parser.add_argument("--sink", choices=["auto", "smtp-sink", "python"], default="auto")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--timeout-factor", type=float, default=1.0)
    return checked_args(parser, argv)


def side_by_side(results: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["Scenario", "Workload", "MailFlow (median)", "Postfix (median)",
              "MailFlow / Postfix", "MailFlow runs", "Postfix runs"]
    table = []
    for key, r in results.items():
        unit = r["unit"]
        mailflow, postfix = r["mailflow"]["median"], r["postfix"]["median"]
        table.append([
            f"{key} {r['title']}", report.WORKLOAD[key].format(**r["params"]),
            f"{mailflow:,.0f} {unit}", f"{postfix:,.0f} {unit}", f"{mailflow / postfix:.2f}x",
            " / ".join(f"{v:,.0f}" for v in r["mailflow"]["runs"]),
            " / ".join(f"{v:,.0f}" for v in r["postfix"]["runs"])])
    return header, table


def markdown_section(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    header, table = side_by_side(results)
    lines = [
        "<!-- peers -->",
        "## Side by side with Postfix",
        "",
        "Written by `make bench-peers` (`.venv/bin/python -m bench.peers`); `make bench` "
        "keeps this section.",
        "",
        f"- Date: {meta['date']}; relay code: git {meta['code']}; Postfix {meta['postfix']}",
        f"- Reproduce: `{meta['command']}`; median of {meta['runs']} run(s) per system, "
        "MailFlow and Postfix runs alternating in one invocation",
        f"- Machine: {machine_info.summary(meta['machine'])}",
        f"- Sink: {meta['sink']}",
        "",
        report.markdown_table(header, table),
        "",
        "How Postfix is measured: a private instance "
        "(`mailflow.testing.postfix.PostfixInstance`, loopback only, fresh per run) with "
        "`virtual_alias_domains = bench.test`, a `texthash` `virtual_alias_maps` expanding "
        "the alias or list address to the same members as MailFlow "
        "(`virtual_alias_expansion_limit` and `virtual_alias_recursion_limit` raised), "
        "`transport_maps` sending `sink.test` to `smtp:[127.0.0.1]:SINKPORT`, "
        "`smtp_destination_recipient_limit = 50`, otherwise Postfix defaults (up to 20 "
        "parallel connections to the sink; MailFlow uses 8). The same load generator and "
        "start as for MailFlow. The sink cannot timestamp arrivals and the maillog has "
        "whole-second timestamps, so the maillog is followed every 10 ms and the end is "
        "`time.time()` when the last expected `status=sent` line appeared; completion is "
        "`postqueue -j` empty, then exactly one `status=sent` line per delivery (none "
        "deferred or bounced) and the sink's transaction count are checked. MailFlow is "
        "measured as in the table above (its own arrival stamps in the store). A ratio "
        "above 1 means MailFlow is faster.",
        "",
        "GNU Mailman 3 is not measured: it is not installed here, and a faithful setup "
        "(Mailman core + REST, its own database and an MTA in front) was out of the time "
        "given for this groundwork; the issue's reference figures are above.",
        "<!-- /peers -->",
    ]
    return "\n".join(lines)


def write_section(section: str, md_path: Path = report.RESULTS_MD) -> None:
    """Put ``section`` in RESULTS.md: replace the old one, else before the keep block."""
    text = md_path.read_text() if md_path.exists() else "# MailFlow Relay benchmark results\n"
    if report.PEERS.search(text):
        text = report.PEERS.sub(lambda _: section, text, count=1)
    elif "<!-- keep -->" in text:
        text = text.replace("<!-- keep -->", f"{section}\n\n<!-- keep -->", 1)
    else:
        text = text.rstrip("\n") + f"\n\n{section}\n"
    md_path.write_text(text)


def postfix_version() -> str:
    try:
        out = subprocess.run(["/usr/sbin/postconf", "-d", "-h", "mail_version"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out or "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = postfix_problem()
    if problem:
        print(f"bench.peers: error: {problem}", file=sys.stderr)
        return 2
    try:
        sink_kind, sink_binary = resolve_kind(args.sink)
    except SinkError as exc:
        print(f"bench.peers: error: {exc}", file=sys.stderr)
        return 2
    keys = list(POSTFIX_KEYS) if args.scenario == "all" else [args.scenario.upper()]
    options = Options(runs=1, scale=args.scale, sink_kind=sink_kind, sink_binary=sink_binary,
                      data_root=args.data_root, timeout_factor=args.timeout_factor,
                      log=lambda line: None)
    sink_name = f"Postfix smtp-sink ({sink_binary})" if sink_kind == "smtp-sink" else \
        "Python sink (mailflow.testing.sink, aiosmtpd)"
    machine = machine_info.describe(args.data_root or Path(tempfile.gettempdir()))
    given = shlex.join(sys.argv[1:] if argv is None else argv)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "code": code_version(), "postfix": postfix_version(), "runs": args.runs,
            "command": f"make bench-peers BENCH_ARGS={shlex.quote(given)}" if given
            else "make bench-peers", "machine": machine, "sink": sink_name}
    print(f"MailFlow vs Postfix {meta['postfix']}: scenario(s) {', '.join(keys)}, "
          f"{args.runs} run(s) each, scale {args.scale:g}, sink {sink_name}", file=sys.stderr)
    results: dict[str, dict[str, Any]] = {}
    try:
        for key in keys:
            title, unit, _ = SCENARIOS[key]
            mailflow_runs: list[dict[str, Any]] = []
            postfix_runs: list[dict[str, Any]] = []
            params: dict[str, Any] = {}
            for number in range(1, args.runs + 1):
                result = run_scenario(key, options)
                params = result.params
                (run,) = result.runs
                mailflow_runs.append({"value": run.value, "rss_mb": round(run.rss_mb, 1),
                                      **run.details})
                postfix_runs.append(POSTFIX_SCENARIOS[key](options))
                print(f"  {key} run {number}/{args.runs}: MailFlow {run.value:,.0f}, Postfix "
                      f"{postfix_runs[-1]['value']:,.0f} {unit}", file=sys.stderr, flush=True)
            results[key] = {
                "title": title, "unit": unit, "params": params,
                "mailflow": {"median": statistics.median(r["value"] for r in mailflow_runs),
                             "runs": [r["value"] for r in mailflow_runs],
                             "details": mailflow_runs},
                "postfix": {"median": statistics.median(r["value"] for r in postfix_runs),
                            "runs": [r["value"] for r in postfix_runs],
                            "details": postfix_runs},
            }
    except (BenchError, SinkError, PostfixError) as exc:
        print(f"bench.peers: FAILED: {exc}", file=sys.stderr)
        return 2
    header, table = side_by_side(results)
    print()
    print(f"MailFlow vs Postfix {meta['postfix']}, median of {args.runs} run(s) each; "
          f"machine: {machine_info.summary(machine)}")
    print(report.plain_table(header, table))
    if args.write:
        PEERS_JSON.write_text(json.dumps({"meta": meta, "results": results}, indent=2,
                                         sort_keys=True) + "\n")
        write_section(markdown_section(results, meta))
        print(f"\nwrote {report.RESULTS_MD} (section 'Side by side with Postfix') and "
              f"{PEERS_JSON}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
