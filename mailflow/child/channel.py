"""The framing between the relay and its child: length-prefixed pickles, strictly read.

Both ends are this code, on one machine, over a socketpair: a frame is a 4-byte length
and a pickle of one message (:mod:`mailflow.child.messages`).  The reading side loads
only the classes the messages module lists, so a frame can never name any other callable.
Frames written in one turn of the event loop go out in one write, so a busy process
pays one system call for many of them.
"""

from __future__ import annotations

import asyncio
import io
import pickle
import struct
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from mailflow.child.messages import WIRE_CLASSES

_LENGTH = struct.Struct("!I")

In = TypeVar("In")
Out = TypeVar("Out")


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return WIRE_CLASSES[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not a message") from None


def encode(message: object) -> bytes:
    """One frame: the length, then the pickle."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


def decode(payload: bytes | memoryview) -> Any:
    """The message of one frame's pickle, loading nothing but the messages' classes."""
    return _Unpickler(io.BytesIO(payload)).load()


class Channel(asyncio.Protocol, Generic[Out, In]):
    """Messages of type ``Out`` sent, ``In`` received; writes batched per loop turn."""

    def __init__(self, on_message: Callable[[In], None],
                 on_lost: Callable[[Exception | None], None]) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._buffer = bytearray()
        self._outgoing: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, message: Out) -> None:
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing += (_LENGTH.pack(len(payload)), payload)

    def _flush(self) -> None:
        chunks, self._outgoing = self._outgoing, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(chunks))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, start)
            end = start + _LENGTH.size + length
            if len(buffer) < end:
                break
            message = _Unpickler(io.BytesIO(memoryview(buffer)[start + _LENGTH.size:end])).load()
            start = end
            self._on_message(message)
        if start:
            del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(exc)
