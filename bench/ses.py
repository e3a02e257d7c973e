"""SMTP -> relay -> Amazon SES (moto) next to SMTP -> relay -> SMTP sink:
``python -m bench.ses`` (issue 13, "Speed" b).

For each egress (``smtp``: an aiosmtpd sink; ``ses``: moto in server mode, its own
process on loopback) a new relay on a new SQLite store gets ``--messages`` messages of
``--size`` bytes to a one-member alias over ``--connections`` SMTP connections (scenario
A's load).  Measured per run: messages per second from the first SMTP command until every
delivery is final (the store polled every 20 ms), and the relay's CPU time per message
(user + system of the relay process and its child, from ``/proc``).  moto's own CPU is
not counted: it stands for AWS.  Exit status 1 if a copy is missing.  Print a JSON line
per run and a Markdown table; the figures go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.machine import describe, summary
from mailflow.model import ListKind
from mailflow.testing.aws import REGION
from mailflow.testing.ports import free_port, wait_for_port
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink

CLK_TCK = os.sysconf("SC_CLK_TCK")
SENDER = "bench@loadgen.test"


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


@contextlib.contextmanager
def moto_process() -> Iterator[str]:
    """moto's server in a process of its own on loopback: its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_for_port("127.0.0.1", port, timeout=30):
            raise RuntimeError("moto did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def aws_env(url: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": url, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}


def verify_domain(url: str, domain: str) -> None:
    import boto3

    boto3.client("sesv2", endpoint_url=url, region_name=REGION, aws_access_key_id="bench",
                 aws_secret_access_key="bench").create_email_identity(EmailIdentity=domain)


def one_run(egress: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        settings = {"MAILFLOW_RETRY_INITIAL_DELAY": "0.5", "MAILFLOW_RETRY_MAX_DELAY": "1",
                    "MAILFLOW_POLL_INTERVAL": "0.1"}
        if egress == "ses":
            url = stack.enter_context(moto_process())
            verify_domain(url, SENDER.partition("@")[2])
            settings.update(aws_env(url), MAILFLOW_EGRESS="ses",
                            MAILFLOW_SES_MAX_SEND_RATE="100000")
        else:
            sink = stack.enter_context(SmtpSink())
            settings.update(MAILFLOW_EGRESS="smtp", MAILFLOW_SMTP_RELAY=sink.url)
        relay = RelayProcess(folder, settings=settings, forked=False)
        relay.init()
        alias, _ = relay.fresh_list(members=1, kind=ListKind.ALIAS)
        stack.enter_context(relay)  # started, and stopped at the end
        assert relay.process is not None
        pid = relay.process.pid
        cpu_before = cpu_seconds(relay.processes())
        sent = loadgen.run("127.0.0.1", relay.smtp_port, args.messages, args.connections,
                           args.size, SENDER, alias, timeout=60)
        deadline = time.time() + args.timeout
        while True:
            delivered = relay.counts()[1].get("delivered", 0)
            if delivered >= args.messages or time.time() > deadline:
                break
            time.sleep(0.02)
        done = time.time()
        cpu = cpu_seconds(relay.processes()) - cpu_before
        elapsed = done - float(sent["first_send"])
        return {"egress": egress, "messages": args.messages, "delivered": delivered,
                "refused": sent["refused"], "seconds": round(elapsed, 3),
                "msgs_per_s": round(delivered / elapsed, 1),
                "relay_cpu_ms_per_msg": round(1000 * cpu / max(1, delivered), 3),
                "relay_pid": pid}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds allowed for every copy to be final, per run")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="mailflow-bench-ses-"))
    print(summary(describe(root)), file=sys.stderr)
    results: dict[str, list[dict[str, Any]]] = {"smtp": [], "ses": []}
    complete = True
    for run in range(args.runs):
        for egress in ("smtp", "ses"):  # interleaved, so both see the same machine load
            result = one_run(egress, root / f"{egress}{run}", args)
            print(json.dumps(result), flush=True)
            results[egress].append(result)
            complete &= result["delivered"] == args.messages and result["refused"] == 0
    print(f"\n| egress | msgs/s (median of {args.runs}) | relay CPU ms/msg (median) |")
    print("|---|---|---|")
    for egress, runs in results.items():
        rate = statistics.median(r["msgs_per_s"] for r in runs)
        cpu = statistics.median(r["relay_cpu_ms_per_msg"] for r in runs)
        print(f"| {egress} | {rate:g} | {cpu:g} |")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
