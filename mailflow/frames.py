"""Frames between the relay and its child processes (egress, listeners).

Both ends are this code, on one machine, over a socketpair: a frame is a 4-byte length
and a pickle.  Frames written in one turn of the event loop go out in one write, so a
busy process pays one system call for many of them.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from collections.abc import Callable
from typing import Any

_LENGTH = struct.Struct("!I")


class FrameProtocol(asyncio.Protocol):
    """Length-prefixed pickled frames in both directions, writes batched per loop turn."""

    def __init__(self, on_frame: Callable[[Any], None],
                 on_lost: Callable[[Exception | None], None]) -> None:
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._buffer = bytearray()
        self._outgoing: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, frame: Any) -> None:
        payload = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing += (_LENGTH.pack(len(payload)), payload)

    def _flush(self) -> None:
        chunks, self._outgoing = self._outgoing, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(chunks))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, start)
            end = start + _LENGTH.size + length
            if len(buffer) < end:
                break
            frame = pickle.loads(memoryview(buffer)[start + _LENGTH.size:end])
            start = end
            self._on_frame(frame)
        if start:
            del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(exc)
