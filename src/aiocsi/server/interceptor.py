"""The one interceptor every call passes through.

A `RecvRequest` listener binds the call's context and swaps the handler for a wrapper
that maps errors (via the table in `aiocsi.errors`), writes one log line per call and
tells the observers (metrics) how the call ended. A `RecvMessage` listener adds what only
the request message knows: the volume id, the Kubernetes objects behind the call and the
secret values to scrub, and applies the spec's size limits to the whole request.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog
from grpclib.const import Status
from grpclib.events import RecvMessage, RecvRequest, SendMessage, listen
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from aiocsi.context import CallContext, current_call, scrub, set_call
from aiocsi.errors import DomainError, grpc_code_name
from aiocsi.logging import get_logger
from aiocsi.server.tracker import CallTracker
from aiocsi.server.wire import Handler, deadline_at, guard_request
from aiocsi.services.validation.common import MAX_STRING_BYTES, request_limits

log = get_logger("aiocsi.rpc")

# Told of every finished call: (full gRPC method path, grpclib status name, seconds).
# It runs on the event loop inside the call's own accounting: it must cost no more than a
# counter increment.
CallObserver = Callable[[str, str, float], None]

_ID_FIELDS = ("volume_id", "source_volume_id")
# A caller-supplied request id goes into every log line of the call: keep it plain.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# What the CO tells the driver about the Kubernetes objects behind a call (DESIGN.md §8b):
# the request field that carries them, and each key with the rpc line's field for it.
_KUBE_KEYS: Mapping[str, Mapping[str, str]] = {
    # CreateVolume, with the provisioner's --extra-create-metadata.
    "parameters": {
        "csi.storage.k8s.io/pvc/namespace": "pvc_namespace",
        "csi.storage.k8s.io/pvc/name": "pvc_name",
        "csi.storage.k8s.io/pv/name": "pv_name",
    },
    # NodePublishVolume, with the CSIDriver's podInfoOnMount.
    "volume_context": {
        "csi.storage.k8s.io/pod.namespace": "pod_namespace",
        "csi.storage.k8s.io/pod.name": "pod_name",
    },
}
_KUBE_METHODS = frozenset({"CreateVolume", "NodePublishVolume"})
# The rpc line's extra fields for the call in this task (set by the message listener).
_rpc_fields: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "aiocsi_rpc_fields", default=None
)


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


def kube_fields(message: object) -> dict[str, str]:
    """The PVC, PV or pod names a request carries, as rpc line fields."""
    found: dict[str, str] = {}
    for field, keys in _KUBE_KEYS.items():
        values = getattr(message, field, None)
        if not isinstance(values, dict):
            continue
        for key, name in keys.items():
            value = values.get(key)
            if isinstance(value, str) and value:
                # Not validated yet: a log line carries at most what a valid name can hold.
                found[name] = value[:MAX_STRING_BYTES]
    return found


def _refuse_when_draining(tracker: CallTracker) -> None:
    if not tracker.admit():
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


def _wrap(
    handler: Handler,
    call: CallContext,
    path: str,
    tracker: CallTracker,
    observers: Sequence[CallObserver],
) -> Handler:
    async def intercepted(stream: Stream[Any, Any]) -> None:
        started = time.perf_counter()
        failure: BaseException | None = None
        tracker.enter()
        try:
            _refuse_when_draining(tracker)
            guard_request(stream)
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
            seconds = time.perf_counter() - started
            code = _finish_code(failure, call)
            log.info(
                "rpc",
                method=call.method,
                request_id=call.request_id,
                grpc_code=code,
                duration_ms=round(seconds * 1000, 3),
                volume_id=call.volume_id,
                **(_rpc_fields.get() or {}),
                **({"error": failure.message} if isinstance(failure, GRPCError) else {}),
            )
            for observe in observers:
                observe(path, code, seconds)

    return intercepted


def install(server: Server, tracker: CallTracker, observers: Sequence[CallObserver] = ()) -> None:
    """Attach the interceptor to `server`; call once before it starts."""
    watching = tuple(observers)

    async def on_request(event: RecvRequest) -> None:
        method = event.method_name.rsplit("/", 1)[-1]
        call = CallContext(
            request_id=_request_id(event.metadata),
            method=method,
            deadline=deadline_at(event.deadline),
        )
        set_call(call)  # in the handler's own task: its context ends with the call
        _rpc_fields.set(None)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=call.request_id, method=method)
        event.method_func = _wrap(event.method_func, call, event.method_name, tracker, watching)

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
        if call.method in _KUBE_METHODS and (found := kube_fields(message)):
            _rpc_fields.set(found)
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
