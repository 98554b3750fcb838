"""Domain errors and the one table that turns them into gRPC status codes.

Domain code raises these; only the server's interceptor looks at the table.
Codes are gRPC's canonical status names, so this module needs no gRPC import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class DomainError(Exception):
    """An expected failure with a message a person can act on."""


class InvalidArgument(DomainError):
    pass


class NotFound(DomainError):
    pass


class AlreadyExists(DomainError):
    pass


class Aborted(DomainError):
    """The call cannot go on as asked (the spec's ABORTED): retrying may succeed."""


class OperationPending(Aborted):
    """Another operation holds the same key; the caller should retry later."""


class InvalidToken(Aborted):
    """A List call's starting_token is not one this driver issued."""


class OutOfRange(DomainError):
    pass


class ResourceExhausted(DomainError):
    pass


class FailedPrecondition(DomainError):
    pass


class Unavailable(DomainError):
    """The driver is shutting down or not ready to take the call."""


class Internal(DomainError):
    """A host operation failed; the message names the cause."""


class DeadlineExceeded(DomainError):
    """The caller's deadline passed; the operation may still be running."""


class Unimplemented(DomainError):
    """The RPC exists but this configuration does not serve it."""


class HostFailure(Exception):
    """A host command or system call failed. The engine decides what it means for CSI."""


class CommandFailed(HostFailure):
    """A host command exited non-zero."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        tail = self.stderr.splitlines()[-1] if self.stderr else "no output"
        super().__init__(f"{self.argv[0]} exited with {returncode}: {tail}")


# The one mapping from domain errors to gRPC canonical status names.
GRPC_CODE_BY_ERROR: Mapping[type[DomainError], str] = {
    InvalidArgument: "INVALID_ARGUMENT",
    NotFound: "NOT_FOUND",
    AlreadyExists: "ALREADY_EXISTS",
    Aborted: "ABORTED",
    OutOfRange: "OUT_OF_RANGE",
    ResourceExhausted: "RESOURCE_EXHAUSTED",
    FailedPrecondition: "FAILED_PRECONDITION",
    Unavailable: "UNAVAILABLE",
    Internal: "INTERNAL",
    DeadlineExceeded: "DEADLINE_EXCEEDED",
    Unimplemented: "UNIMPLEMENTED",
}


def grpc_code_name(error: DomainError) -> str:
    for cls in type(error).__mro__:
        code = GRPC_CODE_BY_ERROR.get(cls)
        if code is not None:
            return code
    return "INTERNAL"
