"""Memory with large messages: ``python -m bench.memory`` (issue 10, item 10).

Sends ``--messages`` different messages of ``--min-mb`` to ``--max-mb`` MB (default
twenty of 20-25 MB) one after the other over SMTP to a running relay whose SMTP egress
goes to an aiosmtpd sink on loopback (:class:`mailflow.testing.sink.SmtpSink`, which
here keeps only the digest of each body), to a list of ``--members`` members with
``--per-transaction`` recipients per SMTP transaction (default 3 and 1: every copy is
sent three times, so a copy that were cached would be found again).  ``--fill N`` first
sends N messages of 0.5-4 MB, which the caches may keep, so the large ones come on top
of full caches.  While it runs, the resident size of the relay and its child process is
sampled every 50 ms (``VmRSS`` summed); at the end it reads each process's ``VmHWM``
(its own peak, so their sum is at or above the real peak) and, after ``--idle`` seconds
without mail, their ``VmRSS`` again.  It checks that every copy arrived with its body
intact and that the ``VmHWM`` sum and the idle sum stay under ``--bound`` MB; exit
status 1 if not.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import random
import smtplib
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.machine import describe, summary
from mailflow.testing.relay import RelayProcess, process_memory
from mailflow.testing.sink import SmtpSink

MB = 1_000_000
LINE = 76  # base64 line length in MIME bodies


class Sampler:
    """The largest ``VmRSS`` sum of the relay and its child, sampled from a thread."""

    def __init__(self, relay: RelayProcess, interval: float = 0.05) -> None:
        self.relay = relay
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> int:
        total = sum(process_memory(pid) for pid in self.relay.processes())
        self.peak = max(self.peak, total)
        return total

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()


def make_message(number: int, size: int, rng: random.Random) -> bytes:
    """A MIME message of about ``size`` bytes whose body is random base64 (all different).

    Every 97th line starts with a dot, so the egress has dots to stuff.
    """
    raw = base64.b64encode(rng.randbytes(size * LINE // (LINE + 2) * 3 // 4 - 300))
    lines = [raw[i:i + LINE] for i in range(0, len(raw), LINE)]
    for i in range(0, len(lines), 97):
        lines[i] = b"." + lines[i][1:]
    head = (f"From: sender@example.org\r\nTo: list@example.test\r\n"
            f"Subject: large message {number}\r\nMessage-ID: <big{number}@example.org>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n").encode()
    return head + b"\r\n".join(lines) + b"\r\n"


def send_all(port: int, rcpt: str, sizes: list[int], seed: int) -> list[str]:
    """Send the messages one after the other; returns the digests of their bodies."""
    rng = random.Random(seed)
    digests = []
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
        client.ehlo("bench.test")
        for number, size in enumerate(sizes):
            message = make_message(number, size, rng)
            digests.append(hashlib.sha256(message.partition(b"\r\n\r\n")[2]).hexdigest())
            client.sendmail("sender@example.org", [rcpt], message)
            del message
    return digests


def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    sizes = [rng.randint(MB // 2, 4 * MB) for _ in range(args.fill)]
    sizes += [rng.randint(int(args.min_mb * MB), int(args.max_mb * MB))
              for _ in range(args.messages)]
    settings = {"MAILFLOW_EGRESS": "smtp", "MAILFLOW_LOG_LEVEL": "WARNING",
                "MAILFLOW_MAX_RECIPIENTS_PER_TRANSACTION": str(args.per_transaction)}
    for item in args.settings:
        key, _, value = item.partition("=")
        settings[f"MAILFLOW_{key.upper()}"] = value
    with tempfile.TemporaryDirectory(prefix="mailflow-memory-") as tmp, \
            SmtpSink(keep_content=False) as sink:
        settings["MAILFLOW_SMTP_RELAY"] = sink.url
        relay = RelayProcess(Path(tmp) / "relay", settings=settings)
        relay.init()
        address, _ = relay.fresh_list(members=args.members)
        with relay:
            deadline = time.monotonic() + 30
            while len(relay.processes()) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)  # the child starts with the relay; wait for it
            with Sampler(relay) as sampler:
                start = sampler.sample()
                started = time.monotonic()
                digests = send_all(relay.smtp_port, address, sizes, args.seed)
                accepted = time.monotonic() - started
                copies = len(sizes) * args.members
                got = sink.wait_for_recipients(copies, timeout=args.timeout)
                relay.wait_settled(timeout=args.timeout)
                delivered = time.monotonic() - started
                time.sleep(args.idle)
            pids = relay.processes()
            hwm = [process_memory(pid, "VmHWM") / MB for pid in pids]
            idle = [process_memory(pid) / MB for pid in pids]
            log = relay.log()
        arrived = sorted(m.body_sha256 for m in sink.messages for _ in m.rcpt_tos)
    expected = sorted(d for d in digests for _ in range(args.members))
    peak_mb, idle_mb, hwm_mb = sampler.peak / MB, sum(idle), sum(hwm)
    large = sizes[args.fill:]
    filled = f"after {args.fill} of 0.5-4 MB, " if args.fill else ""
    print(f"{filled}{args.messages} messages of {min(large) / MB:.1f}-{max(large) / MB:.1f} MB"
          f" ({sum(large) / MB:.0f} MB) to {args.members} members, {args.per_transaction} "
          f"per transaction; accepted in {accepted:.1f} s, delivered in {delivered:.1f} s")
    print(f"relay + child: at start {start / MB:.0f} MB, peak (VmRSS sum sampled every "
          f"50 ms) {peak_mb:.0f} MB, VmHWM sum {hwm_mb:.0f} MB "
          f"({' + '.join(f'{v:.0f}' for v in hwm)}), idle after {args.idle:.0f} s "
          f"{idle_mb:.0f} MB ({' + '.join(f'{v:.0f}' for v in idle)})")
    if args.machine:
        print(summary(describe(Path(tempfile.gettempdir()))))
    problems = []
    if len(got) < copies or arrived != expected:
        problems.append(f"{len(arrived)} copies arrived, {copies} expected "
                        f"({sum(a != e for a, e in zip(arrived, expected, strict=False))} "
                        f"differ)")
    if hwm_mb > args.bound:  # each process's own peak: at or above the real one
        problems.append(f"peak {hwm_mb:.0f} MB over the bound {args.bound} MB")
    if idle_mb > args.bound:
        problems.append(f"idle {idle_mb:.0f} MB over the bound {args.bound} MB")
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    if problems and "Traceback" in log:
        print(log[-4000:], file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--min-mb", type=float, default=20.0)
    parser.add_argument("--max-mb", type=float, default=25.0)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--per-transaction", type=int, default=1)
    parser.add_argument("--fill", type=int, default=0,
                        help="messages of 0.5-4 MB sent first (default 0)")
    parser.add_argument("--bound", type=float, default=250.0, help="MB (10^6 B)")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds before idle RSS")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--machine", action="store_true", help="print the machine too")
    parser.add_argument("--set", dest="settings", action="append", default=[],
                        metavar="FIELD=VALUE", help="extra relay setting (repeatable)")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
