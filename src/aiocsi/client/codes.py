"""What a failed call's code is, and which codes mean the driver did nothing."""

from __future__ import annotations

import errno

from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

# Refusals: the driver did nothing, so there is nothing to undo.
DEFINITIVE = frozenset(
    {
        "INVALID_ARGUMENT",
        "OUT_OF_RANGE",
        "RESOURCE_EXHAUSTED",
        "ALREADY_EXISTS",
        "NOT_FOUND",
        "FAILED_PRECONDITION",
        "UNIMPLEMENTED",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
    }
)
# The driver may still be busy with an interrupted call on the same volume: try again.
RETRYABLE = frozenset({"ABORTED", "UNAVAILABLE", "DEADLINE_EXCEEDED"})


class NotReady(Exception):
    """Probe answered ready=false."""


class BadResponse(Exception):
    """The driver answered OK with a response the spec does not allow."""


def local_code(exc: BaseException) -> str:
    """A short name for a failure on this machine: the errno name, else the exception type."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, type(exc).__name__)
    return type(exc).__name__


def unreachable(exc: BaseException) -> bool:
    """The call never got an answer: no socket, nobody listening, the connection dropped."""
    return isinstance(exc, StreamTerminatedError | ProtocolError | ConnectionError) or (
        isinstance(exc, OSError) and exc.errno in (errno.ENOENT, errno.ENOTSOCK, errno.EACCES)
    )


def grpc_code(exc: BaseException) -> str:
    """The gRPC status name for a failed call (or a short name for a local failure)."""
    if isinstance(exc, GRPCError):
        return str(exc.status.name)
    if isinstance(exc, TimeoutError):  # grpclib's deadline
        return "DEADLINE_EXCEEDED"
    if isinstance(exc, NotReady):
        return "NOT_READY"
    if isinstance(exc, BadResponse):
        return "BAD_RESPONSE"
    if isinstance(exc, StreamTerminatedError | ProtocolError | ConnectionError):
        return "UNAVAILABLE"
    return local_code(exc)
