"""SES ingest through SQS next to SMTP ingest: ``python -m bench.sqs_ingest``.

One relay (SQLite, SMTP egress to the Python sink) and moto in server mode on loopback.
(a) SQS: ``--messages`` mails are put in S3 and announced in an SQS queue as raw SES
``Received`` notifications before the relay starts; the relay polls them (one queue, 10
at a time), fetches each from S3, takes it and relays it to the sink.  (b) SMTP: the same
number of messages of the same size sent by ``bench/loadgen.py`` over 8 connections to
the same relay.  For each: messages/s from the first to the last copy at the sink, and
the relay's CPU seconds (relay process and its child) per message.  moto runs as a
process of its own on the same machine and competes with the relay for the CPU, as a
remote AWS would not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.loadgen import make_message
from mailflow.model import ListKind
from mailflow.testing.aws import MotoServer, received_notification
from mailflow.testing.factories import make_list
from mailflow.testing.ports import wait_for_port
from mailflow.testing.relay import RelayProcess
from mailflow.testing.sink import SmtpSink

SIZE = 2048
SENDER = "sender@example.org"
LOADGEN = Path(__file__).with_name("loadgen.py")
CLK_TCK = os.sysconf("SC_CLK_TCK")


class MotoProcess(MotoServer):
    """moto's server as a process of its own (``moto_server``): in this process it would
    share a GIL with the sink."""

    def __enter__(self) -> MotoProcess:
        self._process = subprocess.Popen(
            [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1",
             "-p", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_for_port("127.0.0.1", self.port, 30):
            self._process.kill()
            raise SystemExit("moto_server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._process.terminate()
        self._process.wait(10)


def relay_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its children so far."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            pids += [int(p) for p in (task / "children").read_text().split()]
    total = 0
    for each in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def wait_copies(sink: SmtpSink, count: int, timeout: float) -> list[float]:
    """Arrival times of the first ``count`` transactions at the sink."""
    deadline = time.monotonic() + timeout
    while len(sink.messages) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(sink.messages)} of {count} copies arrived")
        time.sleep(0.02)
    return sorted(m.at for m in sink.messages)[:count]


def make_queue(moto: MotoServer) -> tuple[str, str]:
    """An empty bucket and SQS queue: (bucket, queue URL)."""
    name = uuid.uuid4().hex[:8]
    bucket = f"bench-{name}"
    moto.client("s3").create_bucket(Bucket=bucket)
    return bucket, moto.client("sqs").create_queue(QueueName=f"bench-{name}")["QueueUrl"]


def preload(moto: MotoServer, bucket: str, queue: str, count: int, alias: str) -> None:
    """``count`` mails into S3 and a notification for each into the queue."""
    s3, sqs = moto.client("s3"), moto.client("sqs")
    batch: list[dict[str, str]] = []
    for index in range(count):
        ses_id = f"{bucket}-{index}"
        s3.put_object(Bucket=bucket, Key=f"inbound/{ses_id}",
                      Body=make_message(index, SIZE, SENDER, alias, tag="sqs"))
        note = received_notification(ses_id, SENDER, [alias], bucket=bucket,
                                     key=f"inbound/{ses_id}")
        batch.append({"Id": str(index), "MessageBody": json.dumps(note)})
        if len(batch) == 10 or index == count - 1:
            sqs.send_message_batch(QueueUrl=queue, Entries=batch)
            batch = []


def figures(arrivals: list[float], cpu: float, count: int) -> dict[str, Any]:
    elapsed = arrivals[-1] - arrivals[0]
    return {"messages": count, "elapsed_s": round(elapsed, 3),
            "messages_per_s": round((count - 1) / elapsed, 1) if elapsed else None,
            "relay_cpu_ms_per_message": round(1000 * cpu / count, 2)}


def run(count: int, folder: Path) -> dict[str, Any]:
    with MotoProcess() as moto, SmtpSink(keep_content=False) as sink:
        alias = f"ingest-{uuid.uuid4().hex[:6]}@example.test"
        bucket, queue = make_queue(moto)
        relay = RelayProcess(folder / "relay", forked=False, settings={
            "MAILFLOW_EGRESS": "smtp", "MAILFLOW_SMTP_RELAY": sink.url,
            "MAILFLOW_SQS_QUEUES": queue, "MAILFLOW_SQS_WAIT_TIME": "1",
            "MAILFLOW_LOG_LEVEL": "WARNING", **moto.env})
        relay.init()
        with relay.repository() as repo:
            make_list(repo, alias, ["rcpt@sink.test"], kind=ListKind.ALIAS)
        relay.start()
        try:
            # The queue fills only now: all the relay's work on it falls after cpu_before
            # (its idle polls meanwhile count too, as they would in service).
            cpu_before = relay_cpu(relay.process.pid)  # type: ignore[union-attr]
            preload(moto, bucket, queue, count, alias)
            arrivals = wait_copies(sink, count, timeout=60 + count / 5)
            sqs = figures(arrivals, relay_cpu(relay.process.pid) - cpu_before,  # type: ignore[union-attr]
                          count)
            relay.wait_settled(60)
            cpu_before = relay_cpu(relay.process.pid)  # type: ignore[union-attr]
            done = subprocess.run(
                [sys.executable, str(LOADGEN), "--port", str(relay.smtp_port), "--count",
                 str(count), "--connections", "8", "--size", str(SIZE), "--mail-from", SENDER,
                 "--rcpt", alias], capture_output=True, text=True, timeout=60 + count / 5)
            sent = json.loads(done.stdout)["sent"]
            if sent != count:
                raise SystemExit(f"SMTP: the relay took {sent} of {count}")
            arrivals = wait_copies(sink, 2 * count, timeout=60 + count / 5)[count:]
            smtp = figures(arrivals, relay_cpu(relay.process.pid) - cpu_before,  # type: ignore[union-attr]
                           count)
        finally:
            relay.stop()
    return {"sqs": sqs, "smtp": smtp, "size_bytes": SIZE}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sqs_ingest", description=__doc__)
    parser.add_argument("--messages", type=int, default=500)
    args = parser.parse_args(argv)
    if args.messages < 2:
        parser.error("--messages must be at least 2")
    with tempfile.TemporaryDirectory(prefix="mailflow-sqs-bench-") as folder:
        print(json.dumps(run(args.messages, Path(folder)), indent=2))


if __name__ == "__main__":
    main()
