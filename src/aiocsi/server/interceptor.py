"""The one interceptor every call passes through.

A `RecvRequest` listener binds the call's context and swaps the handler for a wrapper
that maps errors (via the table in `aiocsi.errors`) and writes one log line per call.
A `RecvMessage` listener adds what only the request message knows: the volume id and
the secret values to scrub.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from typing import Any

import structlog
from grpclib._typing import IServerMethodFunc as Handler
from grpclib.const import Status
from grpclib.events import RecvMessage, RecvRequest, SendMessage, listen
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from aiocsi.context import CallContext, current_call, scrub, set_call
from aiocsi.errors import DomainError, grpc_code_name
from aiocsi.logging import get_logger

log = get_logger("aiocsi.rpc")

_ID_FIELDS = ("volume_id", "source_volume_id")


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
    if isinstance(supplied, str) and 0 < len(supplied) <= 64:  # noqa: PLR2004 - sane bound
        return supplied
    return os.urandom(8).hex()


def _secret_values(message: object) -> frozenset[str]:
    secrets = getattr(message, "secrets", None)
    if isinstance(secrets, dict):
        return frozenset(v for v in secrets.values() if isinstance(v, str) and v)
    return frozenset()


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
            await handler(stream)
        except GRPCError as exc:
            failure = exc
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
                call.volume_id = value
                structlog.contextvars.bind_contextvars(volume_id=value)
                break
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
