"""The one interceptor every call passes through.

Every method's handler is wrapped once, when the server is made: the wrapper binds the
call's context, maps errors (via the table in `aiocsi.errors`), writes one log line per call and
tells the observers (metrics) how the call ended. The wrapper also reads the request
message as the handler receives it, for what only the message knows: the volume id, the
Kubernetes objects behind the call and the secret values to scrub, and applies the spec's
size limits to the whole request. What depends only on the method is worked out once.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from grpclib import const
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from aiocsi.context import CallContext, scrub, set_call
from aiocsi.errors import DomainError, grpc_code_name
from aiocsi.logging import get_logger
from aiocsi.server.tracker import CallTracker
from aiocsi.server.wire import Handler, deadline_at, guard_request, release_stream
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
# The rpc line's extra fields for the call in this task (set by the request inspector).
_rpc_fields: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "aiocsi_rpc_fields", default=None
)


# Request ids need to be unique in a log, not unguessable: a generator seeded once from
# the OS, rather than a getrandom(2) per call.
_ids = random.Random(os.urandom(16))  # noqa: S311 - see above
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(16)))
_NO_FIELDS: Mapping[str, str] = {}


def _request_id(metadata: Mapping[str, object] | None) -> str:
    supplied = metadata.get("x-request-id") if metadata else None
    if isinstance(supplied, str) and _REQUEST_ID.fullmatch(supplied):
        return supplied
    return f"{_ids.getrandbits(64):016x}"


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


@dataclass(frozen=True, slots=True)
class _Method:
    """What the interceptor needs to know of a method: worked out once per method path."""

    path: str  # "/csi.v1.Identity/Probe": what the observers are told
    name: str  # "Probe": the log lines' `method`
    kube: bool  # its request may name Kubernetes objects (_KUBE_KEYS)
    # CreateVolume learns its volume id only from the reply.
    reply_volume: bool

    @classmethod
    def of(cls, path: str) -> _Method:
        name = path.rsplit("/", 1)[-1]
        return cls(path, name, name in _KUBE_METHODS, name == "CreateVolume")


def _inspector(call: CallContext, method: _Method) -> Callable[[Any], None]:
    """What only the request message knows: its volume id, Kubernetes objects, secrets."""

    def inspect(message: Any) -> None:  # noqa: ANN401 - any request type
        secrets = getattr(message, "secrets", None)
        if secrets:
            call.secret_values = _secret_values(message)
        for name in _ID_FIELDS:
            value = getattr(message, name, None)
            if isinstance(value, str) and value:
                # Not validated yet: a log line carries at most what a valid id can hold.
                call.volume_id = value[:MAX_STRING_BYTES]
                break
        if method.kube and (found := kube_fields(message)):
            _rpc_fields.set(found)
        # Before the debug line: an oversized request is refused, not copied into the log.
        request_limits(message)
        if log.is_enabled_for(10):  # DEBUG: the whole request, secrets redacted by the pipeline
            log.debug("rpc_request", request=message.to_dict())

    return inspect


def _learn_reply_volume(stream: Stream[Any, Any], call: CallContext) -> None:
    send = stream.send_message

    async def send_message(message: Any) -> None:  # noqa: ANN401 - the reply type
        volume = getattr(message, "volume", None)
        if not call.volume_id and volume is not None:
            call.volume_id = volume.volume_id
        await send(message)

    stream.send_message = send_message  # type: ignore[method-assign]


def _wrap(
    handler: Handler, method: _Method, tracker: CallTracker, observers: Sequence[CallObserver]
) -> Handler:
    """`handler` inside the interceptor: built once per method, when the server is made."""

    async def intercepted(stream: Stream[Any, Any]) -> None:
        started = time.perf_counter()
        call = CallContext(
            request_id=_request_id(stream.metadata),
            method=method.name,
            deadline=deadline_at(stream.deadline),
        )
        # In the handler's own task: its context ends with the call. The log pipeline
        # reads request_id, method and volume_id from it (logging.add_call_fields).
        set_call(call)
        _rpc_fields.set(None)
        failure: BaseException | None = None
        tracker.enter()
        try:
            _refuse_when_draining(tracker)
            guard_request(stream, _inspector(call, method))
            if method.reply_volume:
                _learn_reply_volume(stream, call)
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
            release_stream(stream)
            tracker.leave()
            seconds = time.perf_counter() - started
            code = _finish_code(failure, call)
            extra = _rpc_fields.get()
            if isinstance(failure, GRPCError):
                extra = {**(extra or {}), "error": failure.message or ""}
            log.info(
                "rpc",
                method=call.method,
                request_id=call.request_id,
                grpc_code=code,
                duration_ms=round(seconds * 1000, 3),
                volume_id=call.volume_id,
                **(extra or _NO_FIELDS),
            )
            for observe in observers:
                observe(method.path, code, seconds)
            # The error's traceback holds this frame, which holds the error: a cycle
            # that would keep the call's streams for the garbage collector.
            failure = None

    return intercepted


class Servable(Protocol):
    """What `grpclib.server.Server` takes: a service's handlers by method path."""

    def __mapping__(self) -> Mapping[str, const.Handler]: ...


class _InterceptedService:
    """A service whose every method goes through the interceptor."""

    def __init__(self, mapping: dict[str, const.Handler]) -> None:
        self._mapping = mapping

    def __mapping__(self) -> dict[str, const.Handler]:
        return self._mapping


def intercept(
    services: Iterable[Servable],
    tracker: CallTracker,
    observers: Sequence[CallObserver] = (),
) -> list[_InterceptedService]:
    """`services` with the interceptor around each method, for `grpclib.server.Server`.

    The handlers are wrapped here, once per method, rather than at every call by a
    grpclib `RecvRequest` listener: no event object, no dispatch, no wrapper made per call.
    """
    watching = tuple(observers)
    return [
        _InterceptedService(
            {
                path: handler._replace(
                    func=_wrap(handler.func, _Method.of(path), tracker, watching)
                )
                for path, handler in service.__mapping__().items()
            }
        )
        for service in services
    ]
