"""The benchmark scenarios, each run against a fresh relay, store and sink.

A (ingest): many ~2 KB messages to a one-member alias over 8 concurrent SMTP connections;
B (fan-out): a few posts to a large list; C (latency): one post at a time to a 10-member
list at idle; D (HTTP ingest): A's load through ``POST /v1/email`` over 8 keep-alive HTTP
connections; E (big list): one post to a 100,000-member list, with the relay's peak RSS
and the bytes it stored; F (personalized fan-out): one post to a 10,000-member list with
one SMTP transaction per recipient (``max_recipients_per_transaction=1``).

Every run starts a new relay process on a new temporary data directory
(SQLite, SMTP egress to the sink), so no run inherits another's queue or cache.

Timing.  Start is ``time.time()`` just before the first SMTP command of the first
message (connections are already open and greeted).  Arrival is the largest
``updated_at`` of the ``delivered`` deliveries: the relay's recorder stamps it with the
wall clock after the sink answered 250 to DATA, when it writes the outcome batch, so it
is at or slightly after the real arrival (a conservative figure).  The store is polled
(every 20 ms for A and B, 2 ms for C) only to learn that everything is final; the
polling interval does not enter the figure.  Relay and benchmark share one clock.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import make_message, send_one
from bench.probe import StoreProbe
from bench.sinks import DumpReader, PostfixSink, PythonSink, start_sink
from mailflow.model import ListKind
from mailflow.services.directory import DirectoryService
from mailflow.store import Repository
from mailflow.testing.relay import RelayProcess

LOADGEN = Path(__file__).with_name("loadgen.py")
DOMAIN = "bench.test"
SENDER = "sender@example.org"
MESSAGE_SIZE = 2048
QUEUED_AS = re.compile(r"queued as (\S+)")
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class BenchError(RuntimeError):
    """A scenario could not complete: what was expected, what happened, what to look at."""


@dataclass
class Options:
    runs: int = 3
    scale: float = 1.0
    sink_kind: str = "smtp-sink"
    sink_binary: str | None = None
    relay_settings: dict[str, str] = field(default_factory=dict)
    data_root: Path | None = None
    timeout_factor: float = 1.0
    rules: bool = False  # A: 1,000 sender entries and 10 filter rules on the alias (issue 11)
    decorated: bool = False  # B and F: prefix, footer, DKIM (F: + personalization) (issue 12)
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)

    def size(self, full: int, minimum: int) -> int:
        return max(minimum, round(full * self.scale))


@dataclass
class RunResult:
    value: float                     # the headline figure of the scenario
    rss_mb: float                    # VmHWM of the relay (+ its child process) at the end
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScenarioResult:
    key: str
    title: str
    unit: str
    params: dict[str, Any]
    runs: list[RunResult]

    @property
    def median(self) -> float:
        return statistics.median(r.value for r in self.runs)

    def median_detail(self, name: str) -> float:
        return statistics.median(float(r.details[name]) for r in self.runs)

    @property
    def rss_peak_mb(self) -> float:
        return max(r.rss_mb for r in self.runs)


# -- the relay, the sink and the store around one run -----------------------------------

@dataclass
class Harness:
    relay: RelayProcess
    sink: PostfixSink | PythonSink
    probe: StoreProbe
    repo: Repository
    options: Options

    @property
    def pid(self) -> int:
        assert self.relay.process is not None
        return self.relay.process.pid

    def check_alive(self) -> None:
        process = self.relay.process
        if process is None or process.poll() is not None:
            raise BenchError(f"the relay exited (status {process and process.returncode})"
                             f"\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        text = self.relay.log().strip().splitlines()[-lines:]
        return "relay log (last lines):\n  " + "\n  ".join(text) if text else "relay log empty"

    def processes(self) -> list[int]:
        """The relay process and its children (the egress and listeners process)."""
        children: list[int] = []
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            with contextlib.suppress(OSError):
                children += [int(p) for p in (task / "children").read_text().split()]
        return [self.pid, *children]

    def rss_mb(self) -> float:
        """Peak resident set size (VmHWM) so far, in MB (10^6 B): the relay process plus
        its children, each at its own peak (an upper bound of what they held at once)."""
        total = 0
        for pid in self.processes():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) * 1024
        if not total:
            raise BenchError("no VmHWM in /proc/PID/status")
        return total / 1e6

    def cpu_seconds(self) -> float:
        """User + system CPU time of the relay process and its children so far."""
        total = 0
        for pid in self.processes():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total / CLK_TCK

    def smtp_client(self) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.relay.smtp_port, local_hostname="bench.test",
                              timeout=60)
        client.ehlo()
        return client

    def wait_all_delivered(self, expected: int, timeout: float, poll: float) -> float:
        """Block until ``expected`` deliveries exist and none is pending; return when seen.

        Fails at once if a delivery was deferred or failed (the sink refused or could not
        be reached: a broken benchmark, not a slow one), if the relay died, or when the
        timeout passes.
        """
        deadline = time.monotonic() + timeout * self.options.timeout_factor
        next_full = time.monotonic() + 1.0
        while True:
            if self.probe.created() >= expected and not self.probe.any_pending():
                return time.time()
            now = time.monotonic()
            if now >= next_full:
                next_full = now + 1.0
                self.check_alive()
                counts = self.repo.delivery_counts()
                if counts.get("deferred") or counts.get("failed"):
                    raise BenchError(
                        f"deliveries were deferred or failed: {_counts(counts)}; "
                        f"{'; '.join(self.probe.sample_replies())}\n{self.log_tail()}")
            if now >= deadline:
                counts = self.repo.delivery_counts()
                raise BenchError(
                    f"timed out after {timeout * self.options.timeout_factor:.0f} s waiting "
                    f"for {expected} deliveries: {_counts(counts)}; sink saw "
                    f"{self.sink.transactions()} transaction(s)\n{self.log_tail()}")
            time.sleep(poll)

    def verify(self, deliveries: int, messages: int, min_transactions: int,
               max_transactions: int) -> dict[str, Any]:
        """Every delivery delivered, every message stored, the sink saw the transactions."""
        counts = self.repo.delivery_counts()
        if counts.get("delivered") != deliveries or sum(counts.values()) != deliveries:
            raise BenchError(f"expected {deliveries} delivered deliveries, store has "
                             f"{_counts(counts)}")
        stored = sum(self.repo.message_counts().values())
        if stored != messages:
            raise BenchError(f"expected {messages} stored messages, store has {stored}")
        seen = self.sink.wait_transactions(min_transactions)
        if not min_transactions <= seen <= max_transactions:
            raise BenchError(f"the sink saw {seen} transaction(s), expected "
                             f"{min_transactions}..{max_transactions}")
        result: dict[str, Any] = {"delivered": counts["delivered"], "messages": stored,
                                  "sink_transactions": seen}
        recipients = self.sink.recipients()
        if recipients is not None:
            if recipients != deliveries:
                raise BenchError(f"the sink received {recipients} recipient(s), expected "
                                 f"{deliveries}")
            result["sink_recipients"] = recipients
        return result

    def arrival(self) -> float:
        """The latest ``updated_at`` of a delivered delivery (see the module docstring)."""
        last = self.probe.delivered_span()[1]
        if last is None:
            raise BenchError("no delivered delivery in the store")
        return float(last)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


@contextmanager
def harness(options: Options, setup: Callable[[Repository, float], None],
            settings: dict[str, str] | None = None, dump: bool = False) -> Iterator[Harness]:
    """A fresh data dir, sink and relay (set up by ``setup`` before it starts).

    ``settings`` are the scenario's own relay settings; they win over ``--set``.
    """
    with tempfile.TemporaryDirectory(prefix="mailflow-bench-", dir=options.data_root) as tmp:
        sink = start_sink(options.sink_kind, options.sink_binary,
                          dump=dump and options.sink_kind == "smtp-sink")
        relay: RelayProcess | None = None
        probe: StoreProbe | None = None
        try:
            env = {"MAILFLOW_EGRESS": "smtp", "MAILFLOW_SMTP_RELAY": sink.url,
                   "MAILFLOW_LOG_LEVEL": "WARNING", **options.relay_settings,
                   **(settings or {})}
            # A real executable: a forked relay would share the fork helper's memory.
            relay = RelayProcess(Path(tmp) / "data", settings=env, forked=False)
            relay.init()
            with relay.repository() as repo:
                setup(repo, time.time())
                relay.start()
                probe = StoreProbe(relay.data_dir / "mailflow.db")
                yield Harness(relay, sink, probe, repo, options)
        finally:
            if probe is not None:
                probe.close()
            if relay is not None:
                relay.stop()
            sink.stop()


def _list_setup(address: str, kind: ListKind, members: list[str]
                ) -> Callable[[Repository, float], None]:
    def setup(repo: Repository, now: float) -> None:
        repo.add_domain(DOMAIN, now)
        repo.create_list(address, kind, address.split("@")[0], 0, now)
        repo.add_members(address, members, now)
    return setup


BLOCK_ENTRIES = 1000
# Ten rules none of which matches the load's messages, so each is tried on every one:
# header and body regular expressions (the body ones make the relay parse the MIME),
# a size and two attachment globs.
FILTER_RULES: tuple[dict[str, Any], ...] = (
    {"header": "Subject", "matches": r"(?i)\bviagra\b"},
    {"header": "From", "matches": r"@spam\.example$"},
    {"header": "X-Spam-Score", "matches": r"^[5-9]"},
    {"header": "Received", "matches": r"(?i)from\s+bad\.host"},
    {"body": r"(?i)cheap\s+pills"},
    {"body": r"(?i)wire\s+transfer\s+now"},
    {"body": r"(?i)unsubscribe\s+here\s+to\s+win"},
    {"larger_than": 10_000_000},
    {"attachment": "*.exe"},
    {"attachment": "application/x-msdownload"},
)


def _with_rules(setup: Callable[[Repository, float], None], alias: str
                ) -> Callable[[Repository, float], None]:
    """``setup``, then 1,000 block entries none of which covers the sender (global, for
    the domain and for the alias, all three scopes asked) and the alias's 10 rules."""

    def with_rules(repo: Repository, now: float) -> None:
        setup(repo, now)
        directory = DirectoryService(repo)
        scopes = (None, DOMAIN, alias)
        for n in range(BLOCK_ENTRIES):
            directory.add_sender_rule("block", f"spammer{n}@*.example{n % 7}",
                                      scopes[n % len(scopes)])
        for rule in FILTER_RULES:
            directory.add_filter_rule(alias, "discard", **rule)

    return with_rules


def _queue_id(code: int, text: str) -> str:
    if code != 250:
        raise BenchError(f"the relay refused a message: {code} {text}")
    found = QUEUED_AS.search(text)
    if not found:
        raise BenchError(f"no queue id in the relay's DATA reply: {code} {text}")
    return found.group(1)


def nearest_rank(values: list[float], percentile: float) -> float:
    """The nearest-rank percentile: the smallest value >= ``percentile`` % of them."""
    ordered = sorted(values)
    rank = max(1, math.ceil(percentile / 100 * len(ordered)))
    return ordered[rank - 1]


# Issue 12's decorated variants of B and F: what a list with the usual decoration costs.
DECO_PREFIX = "[bench]"
# List and member variables; a shared copy (B) has no member, so its line is left out.
DECO_FOOTER = ("-- \n{{ list.name }} <{{ list.address }}>\n"
               "{% if member.address %}Sent to {{ member.address }}. {% endif %}"
               "Leave: {{ unsubscribe_url }}\n")
DECO_PUBLIC_URL = "https://lists.bench.test"  # one-click unsubscribe URLs (RFC 8058)
DECO_SELECTOR = "bench"


def _decorated(setup: Callable[[Repository, float], None], address: str, personalize: bool
               ) -> Callable[[Repository, float], None]:
    """``setup``, then the list's subject prefix and footer, a DKIM key for the domain
    (as ``mailflow dkim keygen`` makes it) and, for F, personalization: each member's
    own footer, one-click unsubscribe token and VERP envelope sender."""

    def decorated(repo: Repository, now: float) -> None:
        setup(repo, now)
        directory = DirectoryService(repo)
        directory.update_list(address, name="Bench",
                              decoration={"subject_prefix": DECO_PREFIX,
                                          "footer_template": DECO_FOOTER},
                              personalize=True if personalize else None)
        directory.create_dkim_key(DOMAIN, DECO_SELECTOR)

    return decorated


def _list_harness(options: Options, address: str, roster: list[str], personalize: bool,
                  settings: dict[str, str] | None = None, dump: bool = False
                  ) -> contextlib.AbstractContextManager[Harness]:
    """The harness of B, E or F: plain, or with ``--decorated`` the list decorated."""
    setup = _list_setup(address, ListKind.LIST, roster)
    if not options.decorated:
        return harness(options, setup, settings, dump)
    return harness(options, _decorated(setup, address, personalize),
                   {"MAILFLOW_PUBLIC_URL": DECO_PUBLIC_URL, **(settings or {})}, dump)


def decoration_check(h: Harness, address: str, personalized: bool) -> dict[str, bool]:
    """What the first copy at the sink shows of the decoration; raises if anything is
    missing: a decorated run that sent plain copies is a broken benchmark, not a fast
    one.  Only the Python sink keeps copies (smtp-sink counts them), so the check runs
    where the sink is Python's (``tests/test_bench_peers.py``); {} otherwise.

    The DKIM signature is verified by dkimpy against the key's record served by a DNS
    server on loopback, as a receiver would."""
    if not isinstance(h.sink, PythonSink):
        return {}
    import dkim

    from mailflow.testing.dns import DnsServer

    copies = h.sink.copies()
    if not copies:
        raise BenchError("decorated run: the sink kept no copy to check")
    copy = copies[0]
    head, _, body = copy.content.partition(b"\r\n\r\n")
    key = h.repo.dkim_key(DOMAIN)
    with DnsServer() as server:
        if key is not None:
            server.add_txt(key.dns_name, key.dns_text)
        verified = bool(dkim.verify(copy.content, dnsfunc=server.txt))
    local = address.split("@")[0]
    member = copy.rcpt_tos[0]
    checks = {
        "subject_prefix": f"\r\nSubject: {DECO_PREFIX} ".encode() in b"\r\n" + head,
        "footer": f"-- \r\nBench <{address}>\r\n".encode() in body,
        "dkim_signed_first": copy.content.startswith(b"DKIM-Signature: "),
        "dkim_verifies": verified,
    }
    if personalized:
        checks.update({
            "member_footer": f"Sent to {member}. Leave: {DECO_PUBLIC_URL}/lists/{address}"
                             "/unsubscribe/".encode() in body,
            "one_click_unsubscribe": b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click"
                                     in head,
            "verp_sender": copy.mail_from.startswith(f"{local}-bounces+")
                           and copy.mail_from.endswith(f"@{DOMAIN}"),
        })
    else:
        checks["list_bounce_sender"] = copy.mail_from == f"{local}-bounces@{DOMAIN}"
    missing = [name for name, ok in checks.items() if not ok]
    if missing:
        raise BenchError(f"decorated run: a copy at the sink lacks {', '.join(missing)} "
                         f"(sender {copy.mail_from!r}):\n"
                         f"{copy.content[:1500].decode('utf-8', 'replace')}")
    return checks


# -- A: ingest ----------------------------------------------------------------------------

def ingest_load(options: Options) -> tuple[int, int, str, str, dict[str, Any]]:
    """A's and D's load: (messages, connections, alias, its one target, params)."""
    count = options.size(2000, minimum=8)
    connections = min(8, count)
    params = {"messages": count, "size_bytes": MESSAGE_SIZE, "connections": connections,
              "alias_members": 1}
    return count, connections, f"ingest@{DOMAIN}", "rcpt@sink.test", params


def ingest(options: Options) -> tuple[dict[str, Any], Callable[[], RunResult]]:
    count, connections, alias, target, params = ingest_load(options)

    setup = _list_setup(alias, ListKind.ALIAS, [target])
    if options.rules:
        setup = _with_rules(setup, alias)
        params["block_entries"], params["filter_rules"] = BLOCK_ENTRIES, len(FILTER_RULES)

    def run() -> RunResult:
        with harness(options, setup) as h:
            cpu_before = h.cpu_seconds()
            command = [sys.executable, str(LOADGEN), "--port", str(h.relay.smtp_port),
                       "--count", str(count), "--connections", str(connections),
                       "--size", str(MESSAGE_SIZE), "--mail-from", SENDER, "--rcpt", alias]
            return measure_ingest(h, options, command, count, cpu_before, "SMTP messages")

    return params, run



def measure_ingest(h: Harness, options: Options, command: list[str], count: int,
                   cpu_before: float, what: str) -> RunResult:
    """Run a load generator against the relay; messages/s from first send to last arrival."""
    limit = (60 + count / 20) * options.timeout_factor
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        raise BenchError(f"the load generator ({what}) did not finish in {limit:.0f} s\n"
                         f"{h.log_tail()}") from None
    try:
        gen = json.loads(done.stdout)
    except ValueError:
        raise BenchError(f"the load generator ({what}) failed (status {done.returncode}): "
                         f"{done.stderr.strip()[-2000:]}") from None
    if gen["refused"] or gen["sent"] != count:
        raise BenchError(f"the relay accepted {gen['sent']} of {count} {what}; "
                         f"first error: {gen['first_error']}\n{h.log_tail()}")
    seen_at = h.wait_all_delivered(count, timeout=60 + count / 20, poll=0.020)
    details = h.verify(count, count, count, count)
    cpu = h.cpu_seconds() - cpu_before
    start, end = gen["first_send"], h.arrival()
    elapsed = end - start
    details.update({
        "elapsed_s": round(elapsed, 4),
        "accepted_per_s": round(count / (gen["last_reply"] - start), 1),
        "seen_by_poll_after_s": round(seen_at - start, 4),
        "relay_cpu_s": round(cpu, 3),
        "relay_cpu_share": round(cpu / elapsed, 2),
        "loadgen_cpu_s": gen["cpu_seconds"],
    })
    return RunResult(count / elapsed, h.rss_mb(), details)

def loadgen_ceiling(options: Options) -> float:
    """The load generator's own rate, scenario A's load sent straight into a fresh sink."""
    count = options.size(2000, minimum=8)
    sink = start_sink(options.sink_kind, options.sink_binary)
    try:
        command = [sys.executable, str(LOADGEN), "--port", str(sink.port), "--count",
                   str(count), "--connections", str(min(8, count)), "--size",
                   str(MESSAGE_SIZE), "--mail-from", SENDER, "--rcpt", "rcpt@sink.test"]
        done = subprocess.run(command, capture_output=True, text=True,
                              timeout=(60 + count / 20) * options.timeout_factor)
        gen = json.loads(done.stdout)
        if gen["sent"] != count:
            raise BenchError(f"load generator calibration: {gen['sent']} of {count} sent; "
                             f"{gen['first_error']}")
        return count / max(gen["last_reply"] - gen["first_send"], 1e-6)
    except (subprocess.TimeoutExpired, ValueError) as exc:
        raise BenchError(f"load generator calibration failed: {exc}") from None
    finally:
        sink.stop()


# -- B: fan-out ---------------------------------------------------------------------------

def fanout(options: Options) -> tuple[dict[str, Any], Callable[[], RunResult]]:
    members = options.size(10_000, minimum=10)
    posts = 5
    address = f"fanout@{DOMAIN}"
    roster = [f"m{i:06d}@sink.test" for i in range(members)]
    params = {"posts": posts, "members": members, "deliveries": posts * members,
              "size_bytes": MESSAGE_SIZE, "decorated": options.decorated}

    def run() -> RunResult:
        with _list_harness(options, address, roster, personalize=False) as h:
            expected = posts * members
            per_tx = int(options.relay_settings.get("MAILFLOW_MAX_RECIPIENTS_PER_TRANSACTION",
                                                    "50"))
            messages = [make_message(i, MESSAGE_SIZE, SENDER, address, "fanout")
                        for i in range(posts)]
            rate, details = fan_out_posts(h, address, messages, members, per_tx,
                                          60 + expected / 250, "posts_accepted_after_s")
            if options.decorated:
                details["decoration_checked"] = decoration_check(h, address, False)
            return RunResult(rate, h.rss_mb(), details)

    return params, run


# -- C: latency ---------------------------------------------------------------------------

def wait_post(reader: DumpReader, seen: set[str], recipients: int, timeout: float,
              poll: float = 0.002) -> float:
    """Until ``recipients`` more reached the sink in new, finished transactions: when.

    ``seen`` holds the transaction files of earlier posts; it is updated.
    """
    before = reader.recipients
    deadline = time.monotonic() + timeout
    while not reader.complete(before + recipients):
        if time.monotonic() >= deadline:
            raise BenchError(f"{reader.recipients - before} of {recipients} recipients of a "
                             f"post reached the sink within {timeout:.0f} s")
        time.sleep(poll)
    new = reader.names() - seen
    seen |= new
    arrival = reader.last_arrival(new)
    if arrival is None:
        raise BenchError("no transaction file for a post")
    return arrival



def latency(options: Options) -> tuple[dict[str, Any], Callable[[], RunResult]]:
    posts = options.size(50, minimum=5)
    members = 10
    address = f"latency@{DOMAIN}"
    roster = [f"l{i:02d}@sink.test" for i in range(members)]
    params = {"posts": posts, "members": members, "warm_up_posts": 1,
              "size_bytes": MESSAGE_SIZE, "pause_between_posts_s": 0.05}

    def one_post(h: Harness, client: smtplib.SMTP, index: int, reader: DumpReader | None,
                 seen: set[str]) -> tuple[float, float]:
        """Send one post, wait for its deliveries: (ms to arrival, ms to the 250).

        Arrival is when ``smtp-sink -d`` closed the post's transaction file (stamped by
        :mod:`bench.arrivals`, as for the peers) where the sink is ``smtp-sink``, else when the
        relay recorded the last outcome.
        """
        message = make_message(index, MESSAGE_SIZE, SENDER, address, "latency")
        start = time.time()
        queue_id = _queue_id(*send_one(client, SENDER, [address], message))
        accepted = time.time()
        deadline = time.monotonic() + 10.0 * options.timeout_factor
        while True:
            total, delivered, pending, last = h.probe.message_progress(queue_id)
            if total == members and delivered == members:
                if reader is not None:
                    last = wait_post(reader, seen, members, 10.0 * options.timeout_factor)
                return (float(last) - start) * 1000, (accepted - start) * 1000
            if total == members and not pending:
                raise BenchError(f"post {queue_id}: only {delivered} of {members} delivered; "
                                 f"{'; '.join(h.probe.sample_replies())}")
            if time.monotonic() >= deadline:
                h.check_alive()
                raise BenchError(f"post {queue_id}: {delivered} of {members} delivered after "
                                 f"{10.0 * options.timeout_factor:.0f} s\n{h.log_tail()}")
            time.sleep(0.002)

    def run() -> RunResult:
        with harness(options, _list_setup(address, ListKind.LIST, roster), dump=True) as h:
            client = h.smtp_client()
            dumping = isinstance(h.sink, PostfixSink) and h.sink.dump_dir is not None
            reader = h.sink.reader() if dumping else None  # type: ignore[union-attr]
            seen: set[str] = set()
            try:
                one_post(h, client, -1, reader, seen)  # warm-up: first connection, caches
                time.sleep(params["pause_between_posts_s"])
                cpu_before = h.cpu_seconds()
                arrivals, accepts = [], []
                for index in range(posts):
                    arrival, accept = one_post(h, client, index, reader, seen)
                    arrivals.append(arrival)
                    accepts.append(accept)
                    time.sleep(params["pause_between_posts_s"])
            finally:
                client.quit()
            details = h.verify((posts + 1) * members, posts + 1, posts + 1, posts + 1)
            p50 = nearest_rank(arrivals, 50)
            details.update({
                "p50_ms": round(p50, 2),
                "p99_ms": round(nearest_rank(arrivals, 99), 2),
                "min_ms": round(min(arrivals), 2),
                "max_ms": round(max(arrivals), 2),
                "accept_p50_ms": round(nearest_rank(accepts, 50), 2),
                "accept_p99_ms": round(nearest_rank(accepts, 99), 2),
                "relay_cpu_s": round(h.cpu_seconds() - cpu_before, 3),
            })
            return RunResult(p50, h.rss_mb(), details)

    return params, run


# -- D: HTTP ingest -----------------------------------------------------------------------

INGRESS_PSK = "bench-ingress-key"


def http_ingest(options: Options) -> tuple[dict[str, Any], Callable[[], RunResult]]:
    count, connections, alias, target, params = ingest_load(options)

    def run() -> RunResult:
        with harness(options, _list_setup(alias, ListKind.ALIAS, [target]),
                     {"MAILFLOW_INGRESS_PSK": INGRESS_PSK}) as h:
            cpu_before = h.cpu_seconds()
            command = [sys.executable, str(LOADGEN), "--protocol", "http", "--psk",
                       INGRESS_PSK, "--port", str(h.relay.http_port), "--count", str(count),
                       "--connections", str(connections), "--size", str(MESSAGE_SIZE),
                       "--mail-from", SENDER, "--rcpt", alias]
            return measure_ingest(h, options, command, count, cpu_before, "HTTP posts")

    return params, run


# -- E and F: one post to a big list ------------------------------------------------------

def blob_usage(data_dir: Path) -> tuple[int, int]:
    """(files, bytes) under the data dir's ``blobs/`` (temporary files included)."""
    files = size = 0
    root = data_dir / "blobs"
    if root.is_dir():
        for path in root.rglob("*"):
            if path.is_file():
                files += 1
                size += path.stat().st_size
    return files, size


def db_bytes(data_dir: Path) -> tuple[int, int]:
    """(main file, write-ahead log) sizes of the SQLite store, in bytes."""
    sizes = []
    for name in ("mailflow.db", "mailflow.db-wal"):
        try:
            sizes.append((data_dir / name).stat().st_size)
        except OSError:
            sizes.append(0)
    return sizes[0], sizes[1]


def fan_out_posts(h: Harness, address: str, messages: list[bytes], members: int,
                  per_tx: int, timeout: float, accepted_key: str
                  ) -> tuple[float, dict[str, Any]]:
    """Posts in turn to ``address``; waits for their deliveries: (deliveries/s, details).

    ``accepted_key`` names the detail that says when the last post was accepted.
    """
    expected = len(messages) * members
    client = h.smtp_client()
    cpu_before = h.cpu_seconds()
    start = time.time()
    try:
        for message in messages:
            _queue_id(*send_one(client, SENDER, [address], message))
        accepted = time.time()
    finally:
        client.quit()
    seen_at = h.wait_all_delivered(expected, timeout=timeout, poll=0.020)
    details = h.verify(expected, len(messages), len(messages) * math.ceil(members / per_tx),
                       expected)
    cpu = h.cpu_seconds() - cpu_before
    elapsed = h.arrival() - start
    details.update({
        "elapsed_s": round(elapsed, 4),
        accepted_key: round(accepted - start, 4),
        "seen_by_poll_after_s": round(seen_at - start, 4),
        "relay_cpu_s": round(cpu, 3),
        "relay_cpu_share": round(cpu / elapsed, 2),
        "relay_cpu_ms_per_delivery": round(cpu / expected * 1000, 4),
    })
    return expected / elapsed, details


def big_list(options: Options) -> tuple[dict[str, Any], Callable[[], RunResult]]:
    members = options.size(100_000, minimum=10)
    address = f"big@{DOMAIN}"
    roster = [f"b{i:06d}@sink.test" for i in range(members)]
    params = {"posts": 1, "members": members, "deliveries": members,
              "size_bytes": MESSAGE_SIZE}

    def run() -> RunResult:
        with harness(options, _list_setup(address, ListKind.LIST, roster)) as h:
            per_tx = int(options.relay_settings.get("MAILFLOW_MAX_RECIPIENTS_PER_TRANSACTION",
                                                    "50"))
            db_before = sum(db_bytes(h.relay.data_dir))
            post = make_message(0, MESSAGE_SIZE, SENDER, address, "biglist")
            rate, details = fan_out_posts(h, address, [post], members, per_tx,
                                          60 + members / 250, "post_accepted_after_s")
            files, blob_total = blob_usage(h.relay.data_dir)
            bodies, body_bytes = h.repo.blob_stats()  # in rows or files, one count
            db_main, db_wal = db_bytes(h.relay.data_dir)
            details.update({
                "bodies_stored": bodies, "body_bytes": body_bytes,
                "blob_files": files, "blob_bytes": blob_total,
                "db_bytes": db_main, "db_wal_bytes": db_wal,
                "db_growth_bytes": db_main + db_wal - db_before,
            })
            return RunResult(rate, h.rss_mb(), details)

    return params, run


def personalized(options: Options) -> tuple[dict[str, Any], Callable[[], RunResult]]:
    members = options.size(10_000, minimum=10)
    address = f"personal@{DOMAIN}"
    roster = [f"p{i:06d}@sink.test" for i in range(members)]
    params = {"posts": 1, "members": members, "deliveries": members,
              "size_bytes": MESSAGE_SIZE, "recipients_per_transaction": 1,
              "decorated": options.decorated}

    def run() -> RunResult:
        with _list_harness(options, address, roster, personalize=True,
                           settings={"MAILFLOW_MAX_RECIPIENTS_PER_TRANSACTION": "1"}) as h:
            post = make_message(0, MESSAGE_SIZE, SENDER, address, "personal")
            rate, details = fan_out_posts(h, address, [post], members, 1,
                                          60 + members / 100, "post_accepted_after_s")
            if options.decorated:
                details["decoration_checked"] = decoration_check(h, address, True)
            return RunResult(rate, h.rss_mb(), details)

    return params, run


SCENARIOS: dict[str, tuple[str, str, Callable[[Options], tuple[dict[str, Any],
                                                                  Callable[[], RunResult]]]]] = {
    "A": ("ingest", "msgs/s", ingest),
    "B": ("fan-out", "deliveries/s", fanout),
    "C": ("latency", "ms (p50)", latency),
    "D": ("HTTP ingest", "msgs/s", http_ingest),
    "E": ("big list", "deliveries/s", big_list),
    "F": ("personalized fan-out", "deliveries/s", personalized),
}


def run_scenario(key: str, options: Options) -> ScenarioResult:
    title, unit, build = SCENARIOS[key]
    params, run = build(options)
    runs: list[RunResult] = []
    for number in range(1, options.runs + 1):
        result = run()
        runs.append(result)
        shown = (f"p50 {result.details['p50_ms']:.1f} ms, p99 {result.details['p99_ms']:.1f} ms"
                 if key == "C" else f"{result.value:,.0f} {unit}")
        options.log(f"  {key} run {number}/{options.runs}: {shown}, "
                    f"peak RSS {result.rss_mb:.0f} MB")
    return ScenarioResult(key, title, unit, params, runs)
