"""Debug egress: prints the envelope and the message instead of sending it."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import BinaryIO

from mailflow.egress.base import RecipientReply

SEPARATOR = b"=" * 72


class StdoutEgress:
    name = "stdout"

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self.stream = stream or sys.stdout.buffer

    async def start(self) -> None:
        pass

    async def send(self, mail_from: str, recipients: Sequence[str],
                   content: bytes) -> list[RecipientReply]:
        # One write of a few kilobytes to a pipe or terminal: not worth a thread.
        envelope = f"MAIL FROM:<{mail_from}>\n" + "".join(f"RCPT TO:<{r}>\n" for r in recipients)
        self.stream.write(b"\n".join([SEPARATOR, envelope.encode(), content, SEPARATOR, b""]))
        self.stream.flush()
        return [RecipientReply(r, 250, "2.0.0 written to stdout") for r in recipients]

    async def close(self) -> None:
        pass
