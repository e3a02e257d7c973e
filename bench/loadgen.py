"""Load generator: N messages over C persistent SMTP or HTTP connections, in its own process.

Run as a script (standard library only, so it starts fast and shares no GIL with the
benchmark or the relay)::

    python bench/loadgen.py --port 2525 --count 2000 --connections 8 --size 2048 \\
        --mail-from sender@example.org --rcpt alias@bench.test

Each connection is opened and greeted (EHLO) before the clock starts; then the threads
take message numbers from a shared counter until all are sent.  Every message is built
in advance, unique (its own Message-ID and sequence number, so the relay's
content-addressed store cannot deduplicate them) and ``--size`` bytes long.  Prints one
JSON object: ``first_send`` and ``last_reply`` (``time.time()``), ``sent``, ``refused``,
the first error, and the CPU seconds the generator used.

With ``--protocol http`` (scenario D) each connection is an ``http.client``
keep-alive connection to the relay's HTTP ingress, and each message is one
``POST /v1/email?from=&to=`` with ``Authorization: Bearer <--psk>``; 2xx counts as sent.
With ``--protocol lmtp`` (GNU Mailman's LMTP runner, ``python -m bench.peers``) the
connections speak LMTP (``LHLO``; one recipient, so one DATA reply), the same messages.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import smtplib
import sys
import threading
import time
from email.utils import formatdate
from urllib.parse import urlencode

FILLER = ("The quick brown fox jumps over the lazy dog; pack my box with five dozen "
          "liquor jugs.")


def make_message(index: int, size: int, mail_from: str, rcpt: str, tag: str = "bench") -> bytes:
    """A plain-text message of exactly ``size`` bytes (at least the header section)."""
    header = (
        f"From: Bench Sender <{mail_from}>\r\n"
        f"To: <{rcpt}>\r\n"
        f"Subject: {tag} message {index}\r\n"
        f"Date: {formatdate(localtime=False)}\r\n"
        f"Message-ID: <{tag}.{index}.{os.getpid()}.{time.time_ns()}@loadgen.test>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
    ).encode()
    lines: list[bytes] = []
    length = len(header)
    number = 0
    while length < size:
        number += 1
        line = f"{index:06d}-{number:03d} {FILLER}"[: max(0, size - length - 2)] + "\r\n"
        lines.append(line.encode())
        length += len(line)
    return header + b"".join(lines)


def send_one(client: smtplib.SMTP, mail_from: str, rcpts: list[str], message: bytes
             ) -> tuple[int, str]:
    """One transaction on an open connection; returns the DATA reply (code, text).

    Unlike ``sendmail`` this keeps the DATA reply, which names the relay's queue id.
    """
    code, text = client.mail(mail_from)
    if code != 250:
        client.rset()
        return code, text.decode(errors="replace")
    accepted = 0
    last = (code, text)
    for rcpt in rcpts:
        code, text = client.rcpt(rcpt)
        last = (code, text)
        accepted += code in (250, 251)
    if not accepted:
        client.rset()
        return last[0], last[1].decode(errors="replace")
    code, text = client.data(message)
    return code, text.decode(errors="replace")


class HttpClient:
    """One keep-alive HTTP/1.1 connection posting raw messages to ``/v1/email``."""

    def __init__(self, host: str, port: int, psk: str, mail_from: str, rcpt: str,
                 timeout: float) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self.conn.connect()
        self.path = "/v1/email?" + urlencode({"from": mail_from, "to": rcpt})
        self.headers = {"Authorization": f"Bearer {psk}", "Content-Type": "message/rfc822",
                        "Connection": "keep-alive"}

    def send(self, message: bytes) -> tuple[int, str]:
        self.conn.request("POST", self.path, body=message, headers=self.headers)
        response = self.conn.getresponse()
        body = response.read()  # read it all, or the connection cannot be reused
        if 200 <= response.status < 300:
            return 250, body.decode(errors="replace")
        return response.status, body.decode(errors="replace")[:500]

    def quit(self) -> None:
        self.conn.close()

    close = quit


def run(host: str, port: int, count: int, connections: int, size: int, mail_from: str,
        rcpt: str, timeout: float, protocol: str = "smtp", psk: str = ""
        ) -> dict[str, object]:
    messages = [make_message(i, size, mail_from, rcpt) for i in range(count)]
    connections = max(1, min(connections, count))
    clients: list = []
    for _ in range(connections):
        if protocol == "http":
            clients.append(HttpClient(host, port, psk, mail_from, rcpt, timeout))
            continue
        kind = smtplib.LMTP if protocol == "lmtp" else smtplib.SMTP
        client = kind(host, port, local_hostname="loadgen.test", timeout=timeout)
        client.ehlo()  # LHLO for LMTP
        clients.append(client)
    lock = threading.Lock()
    state = {"next": 0, "sent": 0, "refused": 0, "first_error": None, "last_reply": 0.0}
    start = threading.Barrier(connections + 1)

    def worker(client: smtplib.SMTP | HttpClient) -> None:
        start.wait()
        while True:
            with lock:
                index = state["next"]
                if index >= count:
                    return
                state["next"] = index + 1
            try:
                if isinstance(client, HttpClient):
                    code, text = client.send(messages[index])
                else:
                    code, text = send_one(client, mail_from, [rcpt], messages[index])
            except (smtplib.SMTPException, http.client.HTTPException, OSError) as exc:
                code, text = 0, f"{type(exc).__name__}: {exc}"
            now = time.time()
            with lock:
                if code == 250:
                    state["sent"] += 1
                else:
                    state["refused"] += 1
                    state["first_error"] = state["first_error"] or f"{code} {text}"
                state["last_reply"] = max(state["last_reply"], now)
            if code == 0:  # the connection is gone: stop this worker
                return

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in clients]
    for thread in threads:
        thread.start()
    start.wait()
    first_send = time.time()
    for thread in threads:
        thread.join()
    for client in clients:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"first_send": first_send, "last_reply": state["last_reply"],
            "sent": state["sent"], "refused": state["refused"] + count - state["next"],
            "first_error": state["first_error"], "connections": connections,
            "protocol": protocol,
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--mail-from", default="sender@example.org")
    parser.add_argument("--rcpt", required=True)
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds allowed for each SMTP command or HTTP request")
    parser.add_argument("--protocol", choices=["smtp", "http", "lmtp"], default="smtp")
    parser.add_argument("--psk", default="", help="bearer key for --protocol http")
    args = parser.parse_args(argv)
    result = run(args.host, args.port, args.count, args.connections, args.size,
                 args.mail_from, args.rcpt, args.timeout, args.protocol, args.psk)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0 if result["refused"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
