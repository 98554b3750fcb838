"""The one interceptor every call passes through.

A `RecvRequest` listener binds the call's context and swaps the handler for a wrapper
that maps errors (via the table in `aiocsi.errors`) and writes one log line per call.
A `RecvMessage` listener adds what only the request message knows: the volume id and
the secret values to scrub, and applies the spec's size limits to the whole request.

Malformed input is the caller's error, never the driver's: a body that does not decode,
a call without a request message or one cut short is INVALID_ARGUMENT, a compressed one
UNIMPLEMENTED and one over MAX_MESSAGE_BYTES RESOURCE_EXHAUSTED (refused from its length
prefix, before it is buffered).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import struct
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import betterproto2
import structlog
from grpclib._typing import IServerMethodFunc as Handler
from grpclib.const import Status
from grpclib.encoding.base import CodecBase
from grpclib.events import RecvMessage, RecvRequest, SendMessage, listen
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from aiocsi.context import CallContext, current_call, scrub, set_call
from aiocsi.errors import DomainError, grpc_code_name
from aiocsi.logging import get_logger
from aiocsi.services.validation.common import MAX_STRING_BYTES, request_limits

log = get_logger("aiocsi.rpc")

_ID_FIELDS = ("volume_id", "source_volume_id")
# gRPC's default receive limit; a CSI request is a few KiB at most.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# The gRPC length-prefixed message: a compressed flag byte and a big-endian uint32 length.
_PREFIX = struct.Struct(">?I")
# A caller-supplied request id goes into every log line of the call: keep it plain.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class CallTracker:
    """Counts calls in flight and refuses new ones once draining starts."""

    def __init__(self) -> None:
        self.active = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.active += 1
        self._idle.clear()

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


def _request_id(metadata: Mapping[str, object] | None) -> str:
    supplied = metadata.get("x-request-id") if metadata is not None else None
    if isinstance(supplied, str) and _REQUEST_ID.fullmatch(supplied):
        return supplied
    return os.urandom(8).hex()


def _secret_values(message: object) -> frozenset[str]:
    secrets = getattr(message, "secrets", None)
    if isinstance(secrets, dict):
        return frozenset(v for v in secrets.values() if isinstance(v, str) and v)
    return frozenset()


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
    """The server's codec, except that a body that does not decode is INVALID_ARGUMENT."""

    def __init__(self, inner: CodecBase) -> None:
        self._inner = inner

    @property
    def __content_subtype__(self) -> str:
        return self._inner.__content_subtype__

    def encode(self, message: Any, message_type: Any) -> bytes:  # noqa: ANN401 - CodecBase's signature
        return self._inner.encode(message, message_type)

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


def _guard_request(stream: Stream[Any, Any]) -> None:
    """Turn malformed request bytes into the caller's error before any handler code runs.

    grpclib offers no hook before decoding, so this swaps the stream's codec and its reads.
    """
    protocol_stream = stream._stream  # noqa: SLF001 - grpclib has no public pre-decode hook
    protocol_stream.recv_data = _limit_reads(protocol_stream.recv_data)  # type: ignore[method-assign,assignment]
    stream._codec = _CheckedCodec(stream._codec)  # noqa: SLF001 - same
    receive = stream.recv_message

    async def recv_message() -> Any:  # noqa: ANN401 - the stream's request type
        message = await receive()
        if message is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "the call carried no request message")
        return message

    stream.recv_message = recv_message  # type: ignore[method-assign]


def _refuse_when_draining(tracker: CallTracker) -> None:
    if tracker.draining:
        raise GRPCError(Status.UNAVAILABLE, "driver is shutting down; retry later")


def _finish_code(exc: BaseException | None, call: CallContext) -> str:
    if exc is None:
        return "OK"
    if isinstance(exc, GRPCError):
        return exc.status.name
    left = call.time_left()
    if left is not None and left <= 0:
        return "DEADLINE_EXCEEDED"
    return "CANCELLED"


def _wrap(handler: Handler, call: CallContext, tracker: CallTracker) -> Handler:
    async def intercepted(stream: Stream[Any, Any]) -> None:
        started = time.perf_counter()
        failure: BaseException | None = None
        tracker.enter()
        try:
            _refuse_when_draining(tracker)
            _guard_request(stream)
            await handler(stream)
        except GRPCError as exc:
            failure = exc
            if not exc.message:  # the generated bases' UNIMPLEMENTED says nothing
                failure = GRPCError(exc.status, f"{call.method}: {exc.status.name.lower()}")
                raise failure from None
            raise
        except DomainError as exc:
            failure = GRPCError(Status[grpc_code_name(exc)], scrub(str(exc)))
            raise failure from None
        except asyncio.CancelledError as exc:
            # Deadline or client gone: grpclib owns the status; we only record it.
            failure = exc
            raise
        except Exception as exc:
            log.exception("unexpected_error", error_type=type(exc).__name__)
            failure = GRPCError(
                Status.INTERNAL, f"internal error ({type(exc).__name__}); see the driver log"
            )
            raise failure from None
        finally:
            tracker.leave()
            log.info(
                "rpc",
                method=call.method,
                request_id=call.request_id,
                grpc_code=_finish_code(failure, call),
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
                volume_id=call.volume_id,
                **({"error": failure.message} if isinstance(failure, GRPCError) else {}),
            )

    return intercepted


def install(server: Server, tracker: CallTracker) -> None:
    """Attach the interceptor to `server`; call once before it starts."""

    async def on_request(event: RecvRequest) -> None:
        method = event.method_name.rsplit("/", 1)[-1]
        call = CallContext(
            request_id=_request_id(event.metadata),
            method=method,
            deadline=event.deadline._timestamp if event.deadline is not None else None,  # noqa: SLF001 - grpclib exposes no public absolute time
        )
        set_call(call)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=call.request_id, method=method)
        event.method_func = _wrap(event.method_func, call, tracker)

    async def on_message(event: RecvMessage) -> None:
        call = current_call()
        if call is None:
            return
        message = event.message
        call.secret_values = _secret_values(message)
        for name in _ID_FIELDS:
            value = getattr(message, name, None)
            if isinstance(value, str) and value:
                # Not validated yet: a log line carries at most what a valid id can hold.
                call.volume_id = value[:MAX_STRING_BYTES]
                structlog.contextvars.bind_contextvars(volume_id=call.volume_id)
                break
        # Before the debug line: an oversized request is refused, not copied into the log.
        request_limits(message)
        if log.is_enabled_for(10):  # DEBUG: the whole request, secrets redacted by the pipeline
            log.debug("rpc_request", request=message.to_dict())

    async def on_reply(event: SendMessage) -> None:
        # CreateVolume learns its volume id only from the reply.
        call = current_call()
        volume = getattr(event.message, "volume", None)
        if call is not None and not call.volume_id and volume is not None:
            call.volume_id = volume.volume_id

    listen(server, RecvRequest, on_request)
    listen(server, RecvMessage, on_message)
    listen(server, SendMessage, on_reply)
