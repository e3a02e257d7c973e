"""The framing between the relay and its child: length-prefixed frames of plain values.

Both ends are this code, on one machine, over a socketpair.  A frame is two 8-byte
lengths (the frame's, and its dump's), a :mod:`marshal` dump of the messages sent in one
turn of the event loop, each as ``(tag, field values)``, and the frame's attachments: the
tag is the message's position in :data:`~mailflow.child.messages.MESSAGES`, the values
are the dataclass's fields in declaration order, nested dataclasses (an envelope, the
replies) likewise.  The codec of each class is derived once from its fields and their
types, so a field added to a message needs no change here.

Attachments: a message's field holding ``ATTACH_ABOVE`` bytes or more (a content) is left
out of the dump (``None`` in its place, its position and length listed after the
messages) and written after it as it is, so sending a large content makes no copy of it
(the event loop's transport keeps a reference until the socket took it).

Why not pickle: a pickle names the classes it loads, so reading one safely needs an
unpickler that filters them, and a class reference in every frame costs more than the
plain values themselves.  :mod:`marshal` reads and writes only builtin values
(str, bytes, int, float, tuple, dict, None), so a frame can name no callable at all;
only the classes registered here are ever built, from their tags.

One frame per turn: a busy process pays one system call and one dump for many messages.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import marshal
import struct
import types
import typing
from collections.abc import Callable, Mapping
from itertools import starmap
from operator import attrgetter
from typing import Any, Generic, TypeVar

from mailflow.child.messages import MESSAGES

_HEADER = struct.Struct("!QQ")  # the frame's length, then its dump's (several contents fit)
ATTACH_ABOVE = 64 * 1024        # bytes: a field this large travels after the dump, uncopied

In = TypeVar("In")
Out = TypeVar("Out")

Encode = Callable[[Any], Any]
Decode = Callable[[Any], Any]


class ProtocolError(Exception):
    """A frame that is not one of the messages."""


def _struct_codec(cls: type) -> tuple[Encode, Decode, bool]:
    """(to values, from values (called with them as arguments), whether every field is
    a plain value) for a dataclass."""
    hints = typing.get_type_hints(cls)
    names = [field.name for field in dataclasses.fields(cls)]
    codecs = [_codec(hints[name]) for name in names]
    if all(codec is None for codec in codecs):
        if not names:
            return (lambda obj: ()), cls, True
        if len(names) == 1:
            one = attrgetter(names[0])
            return (lambda obj: (one(obj),)), cls, True
        return attrgetter(*names), cls, True
    # Generated, as dataclasses generate __init__: a loop over the fields costs more per
    # message.
    scope: dict[str, Any] = {"cls": cls}
    encoded, decoded = [], []
    for i, (name, codec) in enumerate(zip(names, codecs, strict=True)):
        if codec is None:
            encoded.append(f"o.{name}")
            decoded.append(name)
        else:
            scope[f"e{i}"], scope[f"d{i}"] = codec
            encoded.append(f"e{i}(o.{name})")
            decoded.append(f"d{i}({name})")
    exec(f"def encode(o):\n    return ({', '.join(encoded)},)\n"
         f"def decode({', '.join(names)}):\n    return cls({', '.join(decoded)})\n", scope)
    encode, decode = scope["encode"], scope["decode"]
    return encode, decode, False


def _codec(hint: Any) -> tuple[Encode, Decode] | None:
    """How a field of this type crosses, or None where it is a plain value already."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        encode, build, _ = _struct_codec(hint)
        return encode, (lambda values: build(*values))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in args if arg is not type(None)]
        codecs = [_codec(arg) for arg in options]
        if all(codec is None for codec in codecs):
            return None
        if len(options) == 1:
            encode_one, decode_one = _codec(options[0]) or (None, None)
            assert encode_one is not None and decode_one is not None
            return ((lambda v: None if v is None else encode_one(v)),
                    (lambda v: None if v is None else decode_one(v)))
        kinds: list[type] = [typing.get_origin(arg) or arg for arg in options]
        full = [codec or (_same, _same) for codec in codecs]

        def encode_union(value: Any) -> Any:
            if value is None:
                return None
            index = next(i for i, kind in enumerate(kinds) if isinstance(value, kind))
            return index, full[index][0](value)

        return encode_union, (lambda v: None if v is None else full[v[0]][1](v[1]))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if dataclasses.is_dataclass(args[0]) and isinstance(args[0], type):
            encode, build, _ = _struct_codec(args[0])
            # The replies of a transaction: C loops both ways.
            return (lambda v: tuple(map(encode, v))), (lambda v: tuple(starmap(build, v)))
        inner = _codec(args[0])
        if inner is None:
            return None
        return (lambda v: tuple(map(inner[0], v))), (lambda v: tuple(map(inner[1], v)))
    if origin in (dict, Mapping):
        value_codec = _codec(args[1])
        if value_codec is None:
            return (lambda v: dict(v)), (lambda v: v)
        encode_value, decode_value = value_codec
        return ((lambda v: {key: encode_value(item) for key, item in v.items()}),
                (lambda v: {key: decode_value(item) for key, item in v.items()}))
    return None


def _same(value: Any) -> Any:
    return value


def _content_fields(cls: type) -> tuple[int, ...]:
    """The positions of a message's top-level ``bytes`` fields: what may be attached."""
    hints = typing.get_type_hints(cls)
    return tuple(position for position, field in enumerate(dataclasses.fields(cls))
                 if bytes in (hints[field.name], *typing.get_args(hints[field.name])))


_TAGS: dict[type, tuple[int, Encode]] = {}
_BUILDERS: list[Decode] = []
_CONTENTS: list[tuple[int, ...]] = []  # by tag
for _tag, _cls in enumerate(MESSAGES):
    _encode, _decode, _ = _struct_codec(_cls)
    _TAGS[_cls] = (_tag, _encode)
    _BUILDERS.append(_decode)
    _CONTENTS.append(_content_fields(_cls))


def dumps(messages: list[Any]) -> bytes:
    """Messages as plain values (as in a frame without attachments)."""
    return marshal.dumps([_tagged(message) for message in messages])


def _tagged(message: Any) -> tuple[int, Any]:
    tag, encode = _TAGS[type(message)]
    return tag, encode(message)


def loads(payload: bytes | bytearray | memoryview) -> list[Any]:
    """The messages :func:`dumps` wrote; anything else is a :class:`ProtocolError`."""
    try:
        return _build(marshal.loads(payload))
    except (ValueError, TypeError, EOFError) as exc:
        raise ProtocolError(f"not a message: {exc}") from exc


def _build(batch: Any) -> list[Any]:
    try:
        return [_BUILDERS[tag](*values) for tag, values in batch]
    except (ValueError, TypeError, IndexError) as exc:
        raise ProtocolError(f"not a message: {exc}") from exc


def _frame_values(dump: memoryview, attachments: int) -> tuple[list[Any], list[Any]]:
    """A frame's messages as values, and where its ``attachments`` bytes go."""
    try:
        batch, attached = marshal.loads(dump)
        if (attached or attachments) and (
                sum(length for _, _, length in attached) != attachments
                or any(length <= 0 for _, _, length in attached)):
            raise ValueError("the attachments do not fill the frame")
    except (ValueError, TypeError, EOFError) as exc:
        raise ProtocolError(f"not a frame: {exc}") from exc
    return batch, attached


class _Attachments:
    """The contents of a frame, read as they arrive, each into a buffer whose bytes
    become the field's value without a copy (:meth:`io.BytesIO.getvalue`)."""

    def __init__(self, batch: list[Any], attached: list[Any]) -> None:
        self.batch = batch
        self.attached = attached
        self.index = 0
        self.buffer = io.BytesIO()

    def feed(self, data: memoryview) -> memoryview:
        """Take what belongs to the frame; returns the rest (the next frames)."""
        while data and not self.done:
            message, position, length = self.attached[self.index]
            wanted = length - self.buffer.tell()
            self.buffer.write(data[:wanted])
            data = data[wanted:]
            if self.buffer.tell() == length:
                try:
                    tag, values = self.batch[message]
                    values = list(values)
                    values[position] = self.buffer.getvalue()
                    self.batch[message] = (tag, tuple(values))
                except (ValueError, TypeError, IndexError) as exc:
                    raise ProtocolError(f"not a frame: {exc}") from exc
                self.buffer = io.BytesIO()
                self.index += 1
        return data

    @property
    def done(self) -> bool:
        return self.index == len(self.attached)


class Channel(asyncio.Protocol, Generic[Out, In]):
    """Messages of type ``Out`` sent, ``In`` received; writes batched per loop turn."""

    def __init__(self, on_message: Callable[[In], None],
                 on_lost: Callable[[Exception | None], None]) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._buffer = bytearray()
        self._attachments: _Attachments | None = None  # a frame's contents, arriving
        self._outgoing: list[tuple[int, Any]] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, message: Out) -> None:
        tag, encode = _TAGS[type(message)]
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append((tag, encode(message)))

    def _flush(self) -> None:
        batch, self._outgoing = self._outgoing, []
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        attached: list[tuple[int, int, int]] = []  # (message, field, length)
        contents: list[bytes] = []
        for index, (tag, values) in enumerate(batch):
            for position in _CONTENTS[tag]:
                value = values[position]
                if value is not None and len(value) >= ATTACH_ABOVE:
                    attached.append((index, position, len(value)))
                    contents.append(value)
                    values = (*values[:position], None, *values[position + 1:])
                    batch[index] = (tag, values)
        payload = marshal.dumps((batch, attached))
        transport.write(_HEADER.pack(len(payload) + sum(map(len, contents)), len(payload)))
        transport.write(payload)
        for content in contents:
            transport.write(content)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        rest = memoryview(data)
        while rest:
            attachments = self._attachments
            if attachments is None:
                rest = self._frames(rest)
                continue
            rest = attachments.feed(rest)
            if attachments.done:
                self._attachments = None
                for message in _build(attachments.batch):
                    self._on_message(message)

    def _frames(self, data: memoryview) -> memoryview:
        """Deliver the whole frames buffered; at a frame with contents, return what
        follows its values (the contents are read by :class:`_Attachments`)."""
        buffer = self._buffer
        buffer += data
        start = 0
        try:
            while len(buffer) - start >= _HEADER.size:
                length, dumped = _HEADER.unpack_from(buffer, start)
                body = start + _HEADER.size
                if len(buffer) < body + dumped:
                    break
                with memoryview(buffer) as view:
                    batch, attached = _frame_values(view[body:body + dumped], length - dumped)
                start = body + dumped
                if attached:
                    self._attachments = _Attachments(batch, attached)
                    return memoryview(bytes(memoryview(buffer)[start:]))  # what came of them
                for message in _build(batch):
                    self._on_message(message)
        finally:
            if self._attachments is not None:
                buffer.clear()
            elif start:
                del buffer[:start]
        return memoryview(b"")

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(exc)
