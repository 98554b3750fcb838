from __future__ import annotations

import pytest
from grpclib.const import Status

from aiocsi import errors


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidArgument, Status.INVALID_ARGUMENT),
        (errors.NotFound, Status.NOT_FOUND),
        (errors.AlreadyExists, Status.ALREADY_EXISTS),
        (errors.OperationPending, Status.ABORTED),
        (errors.InvalidToken, Status.ABORTED),
        (errors.OutOfRange, Status.OUT_OF_RANGE),
        (errors.ResourceExhausted, Status.RESOURCE_EXHAUSTED),
        (errors.FailedPrecondition, Status.FAILED_PRECONDITION),
        (errors.Unavailable, Status.UNAVAILABLE),
        (errors.Internal, Status.INTERNAL),
        (errors.DeadlineExceeded, Status.DEADLINE_EXCEEDED),
        (errors.Unimplemented, Status.UNIMPLEMENTED),
    ],
)
def test_each_domain_error_maps_to_its_grpc_code(
    error: type[errors.DomainError], code: Status
) -> None:
    assert Status[errors.grpc_code_name(error("x"))] is code


def test_every_table_entry_names_a_real_grpc_status() -> None:
    for name in errors.GRPC_CODE_BY_ERROR.values():
        assert Status[name].name == name


def test_an_unmapped_domain_error_is_internal_never_unknown() -> None:
    class Strange(errors.DomainError):
        pass

    assert errors.grpc_code_name(Strange("?")) == "INTERNAL"


def test_command_failed_keeps_argv_code_and_last_stderr_line() -> None:
    exc = errors.CommandFailed(["mkfs.ext4", "/dev/loop9"], 1, "warning\nmkfs.ext4: bad thing\n")
    assert exc.argv == ("mkfs.ext4", "/dev/loop9")
    assert exc.returncode == 1
    assert str(exc) == "mkfs.ext4 exited with 1: mkfs.ext4: bad thing"
