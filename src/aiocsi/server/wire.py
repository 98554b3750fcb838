"""Wire guards: malformed request bytes become the caller's error before a handler runs.

Malformed input is the caller's error, never the driver's: a body that does not decode,
a call without a request message or one cut short is INVALID_ARGUMENT, a compressed one
UNIMPLEMENTED and one over MAX_MESSAGE_BYTES RESOURCE_EXHAUSTED (refused from its length
prefix, before it is buffered).

grpclib offers no hook before decoding and no public absolute deadline, so this is the one
file that reaches into grpclib's private attributes (`tests/unit/test_wire.py` pins each
one, so a grpclib upgrade that moves them fails a test, not a call).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import betterproto2
from grpclib._typing import IServerMethodFunc
from grpclib.const import Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError
from grpclib.metadata import Deadline
from grpclib.server import Stream

from aiocsi.services.pages import encoded_ahead

# A handler as grpclib calls it: the stream in, nothing out.
Handler = IServerMethodFunc
# gRPC's default receive limit; a CSI request is a few KiB at most.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# The gRPC length-prefixed message: a compressed flag byte and a big-endian uint32 length.
_PREFIX = struct.Struct(">?I")


def deadline_at(deadline: Deadline | None) -> float | None:
    """The deadline as a `time.monotonic()` instant (grpclib keeps only a private one)."""
    return deadline._timestamp if deadline is not None else None  # noqa: SLF001 - no public absolute time


# The Python type betterproto2 gives each scalar protobuf type when the wire type is right.
# fmt: off
_INT_TYPES = ("int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32", "fixed64",
              "sfixed32", "sfixed64")
_SCALAR_TYPES: Mapping[str, type] = {
    "string": str, "bytes": bytes, "bool": bool, "enum": int, "float": float, "double": float,
    **dict.fromkeys(_INT_TYPES, int),
}
# fmt: on


def _wrong_item(value: object, proto_type: str, field: str) -> str | None:
    if proto_type == "message":
        if not isinstance(value, betterproto2.Message):
            return field
        return wrong_wire_type(value, f"{field}.")
    expected = _SCALAR_TYPES.get(proto_type)
    return None if expected is None or isinstance(value, expected) else field


def _wrong_map(value: object, meta: Any, field: str) -> str | None:  # noqa: ANN401 - betterproto2's FieldMetadata
    if not isinstance(value, dict):
        return field
    key_meta, value_meta = meta.map_meta
    for key, item in value.items():
        # Named without the key: it is the caller's text, and may be a secret.
        wrong = _wrong_item(key, key_meta.proto_type, field) or _wrong_item(
            item, value_meta.proto_type, field
        )
        if wrong is not None:
            return wrong
    return None


def _wrong_list(value: object, meta: Any, field: str) -> str | None:  # noqa: ANN401 - same
    if not isinstance(value, list):
        return field
    for index, item in enumerate(value):
        if (wrong := _wrong_item(item, meta.proto_type, f"{field}[{index}]")) is not None:
            return wrong
    return None


def wrong_wire_type(message: object, prefix: str = "") -> str | None:
    """The first field whose decoded value does not have its declared type, if any.

    betterproto2 decodes whatever wire type it finds: a varint where a string belongs
    comes out as an int, a length-delimited run where an int belongs as a list.
    """
    for spec in dataclasses.fields(message):  # type: ignore[arg-type]
        meta = spec.metadata.get("betterproto")
        if meta is None:
            continue
        value = getattr(message, spec.name)
        field = prefix + spec.name
        if value is None:
            # Only a message (or proto3 `optional`) field may be unset; a group's wire type
            # leaves any field None.
            if meta.optional or (meta.proto_type == "message" and not meta.repeated):
                continue
            return field
        if meta.proto_type == "map":
            wrong = _wrong_map(value, meta, field)
        elif meta.repeated:
            wrong = _wrong_list(value, meta, field)
        else:
            wrong = _wrong_item(value, meta.proto_type, field)
        if wrong is not None:
            return wrong
    return None


class _CheckedCodec(CodecBase):
    """The server's codec, except that a body that does not decode is INVALID_ARGUMENT,
    and a reply encoded ahead (services/pages.py) is sent as those bytes."""

    def __init__(self, inner: CodecBase) -> None:
        self._inner = inner

    @property
    def __content_subtype__(self) -> str:
        return self._inner.__content_subtype__

    def encode(self, message: Any, message_type: Any) -> bytes:  # noqa: ANN401 - CodecBase's signature
        ahead = encoded_ahead(message)
        return ahead if ahead is not None else self._inner.encode(message, message_type)

    def decode(self, data: bytes, message_type: Any) -> Any:  # noqa: ANN401 - CodecBase's signature
        name = getattr(message_type, "__name__", "request")
        try:
            message = self._inner.decode(data, message_type)
        except Exception as exc:  # noqa: BLE001 - whatever the decoder trips on, the bytes are bad
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"the request is not a valid {name} message ({type(exc).__name__})",
            ) from None
        if (wrong := wrong_wire_type(message)) is not None:
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"the request is not a valid {name} message ({wrong} has the wrong wire type)",
            )
        return message


def _limit_reads(
    read: Callable[[int], Awaitable[bytes]],
) -> Callable[[int], Coroutine[Any, Any, bytes]]:
    """Check each length prefix before the body it announces is read (and buffered)."""
    expect_prefix = True

    async def recv_data(size: int) -> bytes:
        nonlocal expect_prefix
        if not expect_prefix and size > MAX_MESSAGE_BYTES:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"the request is {size} bytes; at most {MAX_MESSAGE_BYTES} are accepted",
            )
        try:
            data = await read(size)
        except AssertionError:  # grpclib's Buffer: the stream ended before `size` bytes
            data = b"\0"
        # No bytes at all where a prefix starts is the end of the stream: not an error.
        if len(data) < size and (data or not expect_prefix):
            raise GRPCError(Status.INVALID_ARGUMENT, "the request ended before its declared end")
        if expect_prefix and data and _PREFIX.unpack(data)[0]:
            raise GRPCError(Status.UNIMPLEMENTED, "compressed requests are not supported")
        if data:
            expect_prefix = not expect_prefix
        return data

    return recv_data


# The server's codec is one object for all its calls: wrapped once, not at every call.
_checked_codecs: dict[int, tuple[CodecBase, _CheckedCodec]] = {}


def _checked(inner: CodecBase) -> _CheckedCodec:
    if isinstance(inner, _CheckedCodec):
        return inner
    known = _checked_codecs.get(id(inner))
    if known is None or known[0] is not inner:
        # The pair keeps `inner` alive, so its id cannot be reused by another codec.
        known = _checked_codecs[id(inner)] = (inner, _CheckedCodec(inner))
    return known[1]


def guard_request(stream: Stream[Any, Any], inspect: Callable[[Any], None] | None = None) -> None:
    """Turn malformed request bytes into the caller's error before any handler code runs.

    grpclib offers no hook before decoding, so this swaps the stream's codec and its reads.
    `inspect`, if given, sees each decoded request message before the handler does (and
    may refuse it by raising): cheaper than a grpclib `RecvMessage` listener, whose event
    object and dispatch cost every call.
    """
    protocol_stream = stream._stream  # noqa: SLF001 - grpclib has no public pre-decode hook
    protocol_stream.recv_data = _limit_reads(protocol_stream.recv_data)  # type: ignore[method-assign,assignment]
    stream._codec = _checked(stream._codec)  # noqa: SLF001 - same
    receive = stream.recv_message

    async def recv_message() -> Any:  # noqa: ANN401 - the stream's request type
        message = await receive()
        if message is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "the call carried no request message")
        if inspect is not None:
            inspect(message)
        return message

    stream.recv_message = recv_message  # type: ignore[method-assign]


# The instance attributes the interceptor sets on a call's streams, each a closure over a
# bound method of its own stream: a reference cycle until they go.
_SET_ON_STREAM = ("recv_message", "send_message")
_SET_ON_PROTOCOL_STREAM = ("recv_data",)


def release_stream(stream: Stream[Any, Any]) -> None:
    """Undo what `guard_request` (and any wrapped send) set on a finished call's streams.

    Without this each call left ~40 objects (its streams, buffers, queues, events,
    metadata) in reference cycles, freed only by the garbage collector: the collections
    that found them ran several times a second under load and held the loop for up to
    ~20 ms each. Removed, the streams are freed by reference counting when the call ends.
    """
    for target, names in (
        (stream, _SET_ON_STREAM),
        (stream._stream, _SET_ON_PROTOCOL_STREAM),  # noqa: SLF001 - see guard_request
    ):
        for name in names:
            target.__dict__.pop(name, None)
