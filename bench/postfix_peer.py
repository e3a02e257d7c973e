"""Postfix as MailFlow's peer in ``python -m bench.peers``: scenarios A, B, C, E and F.

The relay.  :class:`mailflow.testing.postfix.PostfixInstance` (its own configuration,
queue and maillog in a temporary folder; smtpd on a free loopback port; needs root)
with ``virtual_alias_domains = bench.test`` and a ``texthash`` ``virtual_alias_maps``
that expands the alias or list address to the same members as MailFlow's store holds
(``virtual_alias_expansion_limit`` raised to the member count, so E's 100,000 fit, and
``virtual_alias_recursion_limit`` raised; lists over 1,000 members in two levels of
1,000, see :func:`alias_entries`), ``transport_maps`` sending the members' domain
to the sink (``smtp:[127.0.0.1]:PORT``) and ``smtp_destination_recipient_limit = 50``
(MailFlow's recipients per transaction; 1 for F, one transaction per recipient).
Everything else is Postfix's default (e.g. up to 20 parallel connections to the sink,
where MailFlow uses 8); a fresh instance and a fresh sink for every run.  The workloads
are MailFlow's (:mod:`bench.scenarios`): same messages, counts, sender and members.

Timing.  Start is as for MailFlow (``time.time()`` before the first SMTP command of the
first message).  For A, B, E and F a thread follows the maillog every 10 ms (reading
only what was appended) and notes ``time.time()`` when each ``status=sent`` line
appears; the end is when the last expected one appeared (at most ~10 ms late: a
conservative figure, as MailFlow's).  Completion is checked with ``postqueue -j``
(polled until the queue is empty), then the run checks that the maillog has exactly one
``status=sent`` line per expected delivery, none deferred or bounced, and that the sink
saw the expected number of transactions.  For C, 10 ms would be too coarse: the sink
runs with ``smtp-sink -d`` (a file per transaction) and a post's arrival is when the
sink closed the file holding its 10 recipients (:mod:`bench.arrivals`).

Memory.  The peak of the sum of ``VmRSS`` over Postfix's ``master`` and all its child
processes, sampled every 100 ms while the run goes on (:mod:`bench.procs`).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loadgen import make_message, send_one
from bench.procs import TreeRssSampler
from bench.scenarios import (
    DOMAIN,
    LOADGEN,
    MESSAGE_SIZE,
    SENDER,
    BenchError,
    Options,
    ingest_load,
    nearest_rank,
    wait_post,
)
from bench.sinks import DumpReader, PostfixSink, PythonSink, start_sink
from mailflow.testing.postfix import PostfixInstance

SENT = re.compile(r" status=sent ")
NOT_SENT = re.compile(r" status=(deferred|bounced|expired) .*")


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


ALIAS_CHUNK = 1000


def alias_entries(address: str, members: list[str]) -> dict[str, str]:
    """The virtual alias entries expanding ``address`` to ``members``.

    Up to :data:`ALIAS_CHUNK` members in one entry; a longer list in two levels
    (``address`` -> ``LOCAL-part-NNN@DOMAIN`` -> up to 1,000 members each), as big lists
    are set up for Postfix: its cleanup(8) parses one alias value in quadratic time (a
    flat 100,000-address entry kept it busy 195 s before the post was accepted; nested,
    well under a second).  Same recipients either way.
    """
    if len(members) <= ALIAS_CHUNK:
        return {address: ",".join(members)}
    local, domain = address.split("@", 1)
    parts = {f"{local}-part-{n:03d}@{domain}": ",".join(members[i:i + ALIAS_CHUNK])
             for n, i in enumerate(range(0, len(members), ALIAS_CHUNK))}
    return {address: ",".join(parts), **parts}


def postfix_relay(sink_port: int, address: str, members: list[str], data_root: Path | None,
                  recipients_per_transaction: int = 50) -> PostfixInstance:
    """A configured (not started) private Postfix expanding ``address`` to ``members``."""
    instance = PostfixInstance(base_dir=data_root)
    instance.main_settings({
        "virtual_alias_domains": DOMAIN,
        "virtual_alias_maps": instance.write_map("virtual", alias_entries(address, members)),
        "virtual_alias_expansion_limit": str(max(1000, len(members) + 10)),
        "virtual_alias_recursion_limit": "1000",
        "transport_maps": instance.write_map(
            "transport", {"sink.test": f"smtp:[127.0.0.1]:{sink_port}"}),
        "smtp_destination_recipient_limit": str(recipients_per_transaction),
        "message_size_limit": str(10 * 1024 * 1024),
    })
    return instance


def master_pid(instance: PostfixInstance) -> int:
    try:
        return int(instance.pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        raise BenchError(f"no Postfix master pid in {instance.pid_file}") from None


@dataclass
class PostfixRun:
    instance: PostfixInstance
    sink: PostfixSink | PythonSink
    rss: TreeRssSampler


@contextmanager
def postfix_run(options: Options, address: str, members: list[str], per_tx: int = 50,
                dump: bool = False) -> Iterator[PostfixRun]:
    """A fresh sink and a started Postfix relaying to it, with its memory sampled."""
    sink = start_sink(options.sink_kind, options.sink_binary, dump=dump)
    instance: PostfixInstance | None = None
    sampler: TreeRssSampler | None = None
    try:
        instance = postfix_relay(sink.port, address, members, options.data_root, per_tx)
        instance.start()
        sampler = TreeRssSampler(master_pid(instance)).start()
        yield PostfixRun(instance, sink, sampler)
    finally:
        if sampler is not None:
            sampler.stop()
        if instance is not None:
            instance.stop()
            instance.remove()
        sink.stop()


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


def _throughput_run(options: Options, address: str, members: list[str],
                    send: Callable[[int], tuple[float, dict[str, Any]]], expected: int,
                    transactions: tuple[int, int], timeout: float, per_tx: int = 50
                    ) -> dict[str, Any]:
    """One run against a fresh Postfix and sink; ``send(port)`` gives (start, details)."""
    with postfix_run(options, address, members, per_tx) as run:
        follower = MaillogFollower(run.instance.log_path).start()
        try:
            start, details = send(run.instance.smtp_port)
            _wait_postfix(run.instance, follower, expected, timeout * options.timeout_factor)
        finally:
            follower.stop()
        if follower.sent != expected or follower.last_sent_at is None:
            raise BenchError(f"Postfix logged {follower.sent} status=sent, expected {expected}")
        seen = run.sink.wait_transactions(transactions[0])
        if not transactions[0] <= seen <= transactions[1]:
            raise BenchError(f"the sink saw {seen} transaction(s) from Postfix, expected "
                             f"{transactions[0]}..{transactions[1]}")
        elapsed = follower.last_sent_at - start
        details.update({"delivered": follower.sent, "sink_transactions": seen,
                        "elapsed_s": round(elapsed, 4)})
        return peer_record(expected / elapsed, run.rss, details)


def peer_record(value: float, rss: TreeRssSampler, details: dict[str, Any]) -> dict[str, Any]:
    """One peer run's record: its figure, its peak RSS and the details."""
    return {"value": value, "rss_mb": round(rss.stop(), 1),
            "rss_processes": rss.peak_processes, **details}


def post_in_turn(client: smtplib.SMTP, address: str, messages: list[bytes],
                 peer: str) -> tuple[float, float]:
    """Posts one after another on one connection, then QUIT: (start, all accepted)."""
    start = time.time()
    try:
        for message in messages:
            code, text = send_one(client, SENDER, [address], message)
            if code != 250:
                raise BenchError(f"{peer} refused a post: {code} {text}")
        accepted = time.time()
    finally:
        client.quit()
    return start, accepted


def smtp_client(port: int) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="bench.test", timeout=60)
    client.ehlo()
    return client


def send_posts(port: int, address: str, messages: list[bytes]) -> tuple[float, dict[str, Any]]:
    """Posts one after another on one connection: (start, {"posts_accepted_after_s"})."""
    start, accepted = post_in_turn(smtp_client(port), address, messages, "Postfix")
    return start, {"posts_accepted_after_s": round(accepted - start, 4)}


# -- the scenarios ------------------------------------------------------------------------

def postfix_ingest(options: Options) -> dict[str, Any]:
    count, connections, alias, target, _ = ingest_load(options)

    def send(port: int) -> tuple[float, dict[str, Any]]:
        command = [sys.executable, str(LOADGEN), "--port", str(port), "--count", str(count),
                   "--connections", str(connections), "--size", str(MESSAGE_SIZE),
                   "--mail-from", SENDER, "--rcpt", alias]
        gen = run_loadgen(command, count, options, "Postfix")
        start = gen["first_send"]
        return start, {"accepted_per_s": round(count / (gen["last_reply"] - start), 1)}

    return _throughput_run(options, alias, [target], send, count, (count, count),
                           timeout=60 + count / 20)


def run_loadgen(command: list[str], count: int, options: Options, peer: str
                ) -> dict[str, Any]:
    """Run ``bench/loadgen.py``; its JSON report, after checking every message went in."""
    limit = (60 + count / 20) * options.timeout_factor
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit)
        gen: dict[str, Any] = json.loads(done.stdout)
    except (subprocess.TimeoutExpired, ValueError) as exc:
        raise BenchError(f"the load generator failed against {peer}: {exc}") from None
    if gen["refused"] or gen["sent"] != count:
        raise BenchError(f"{peer} accepted {gen['sent']} of {count} messages; first "
                         f"error: {gen['first_error']}")
    return gen


def postfix_fanout(options: Options) -> dict[str, Any]:
    members = options.size(10_000, minimum=10)
    posts = 5
    address = f"fanout@{DOMAIN}"
    roster = [f"m{i:06d}@sink.test" for i in range(members)]
    expected = posts * members
    messages = [make_message(i, MESSAGE_SIZE, SENDER, address, "fanout") for i in range(posts)]
    return _throughput_run(options, address, roster,
                           lambda port: send_posts(port, address, messages), expected,
                           (posts * math.ceil(members / 50), expected),
                           timeout=60 + expected / 250)


def _one_post_run(options: Options, prefix: str, tag: str, members: int, per_tx: int,
                  timeout: float) -> dict[str, Any]:
    """E and F: one post to a ``members``-strong list, ``per_tx`` recipients a transaction."""
    address = f"{tag}@{DOMAIN}"
    roster = [f"{prefix}{i:06d}@sink.test" for i in range(members)]
    message = make_message(0, MESSAGE_SIZE, SENDER, address,
                           "biglist" if tag == "big" else "personal")

    def send(port: int) -> tuple[float, dict[str, Any]]:
        start, details = send_posts(port, address, [message])
        return start, {"post_accepted_after_s": details["posts_accepted_after_s"]}

    return _throughput_run(options, address, roster, send, members,
                           (math.ceil(members / per_tx), members), timeout, per_tx)


def postfix_big_list(options: Options) -> dict[str, Any]:
    members = options.size(100_000, minimum=10)
    return _one_post_run(options, "b", "big", members, 50, timeout=60 + members / 250)


def postfix_personalized(options: Options) -> dict[str, Any]:
    members = options.size(10_000, minimum=10)
    return _one_post_run(options, "p", "personal", members, 1, timeout=60 + members / 100)


def latency_posts(options: Options, reader: DumpReader, post: Callable[[bytes], None],
                  members: int, poll: float) -> tuple[list[float], list[float]]:
    """C's loop for a peer: a warm-up, then posts one at a time (ms to arrival, to accept)."""
    posts = options.size(50, minimum=5)
    address = f"latency@{DOMAIN}"
    seen: set[str] = set()
    arrivals: list[float] = []
    accepts: list[float] = []
    for index in range(-1, posts):
        message = make_message(index, MESSAGE_SIZE, SENDER, address, "latency")
        start = time.time()
        post(message)
        accepted = time.time()
        arrival = wait_post(reader, seen, members, 10.0 * options.timeout_factor, poll)
        if index >= 0:  # the first post is the warm-up, as for MailFlow
            arrivals.append((arrival - start) * 1000)
            accepts.append((accepted - start) * 1000)
        time.sleep(0.05)
    return arrivals, accepts


def latency_details(arrivals: list[float], accepts: list[float]) -> dict[str, Any]:
    return {"p50_ms": round(nearest_rank(arrivals, 50), 2),
            "p99_ms": round(nearest_rank(arrivals, 99), 2),
            "min_ms": round(min(arrivals), 2), "max_ms": round(max(arrivals), 2),
            "accept_p50_ms": round(nearest_rank(accepts, 50), 2),
            "accept_p99_ms": round(nearest_rank(accepts, 99), 2)}


def measure_latency(options: Options, reader: DumpReader, client: smtplib.SMTP,
                    members: int, poll: float, peer: str) -> dict[str, Any]:
    """C against a peer: posts in turn on ``client`` (closed after); the run's details."""
    address = f"latency@{DOMAIN}"

    def post(message: bytes) -> None:
        code, text = send_one(client, SENDER, [address], message)
        if code != 250:
            raise BenchError(f"{peer} refused a post: {code} {text}")

    try:
        arrivals, accepts = latency_posts(options, reader, post, members, poll)
    finally:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            client.quit()
    details = latency_details(arrivals, accepts)
    details.update({"delivered": reader.recipients, "sink_transactions": reader.transactions})
    return details


def postfix_latency(options: Options) -> dict[str, Any]:
    members = 10
    roster = [f"l{i:02d}@sink.test" for i in range(members)]
    with postfix_run(options, f"latency@{DOMAIN}", roster, dump=True) as run:
        assert isinstance(run.sink, PostfixSink)
        details = measure_latency(options, run.sink.reader(),
                                  smtp_client(run.instance.smtp_port), members, 0.002,
                                  "Postfix")
        return peer_record(details["p50_ms"], run.rss, details)


POSTFIX_SCENARIOS: dict[str, Callable[[Options], dict[str, Any]]] = {
    "A": postfix_ingest, "B": postfix_fanout, "C": postfix_latency,
    "E": postfix_big_list, "F": postfix_personalized,
}
