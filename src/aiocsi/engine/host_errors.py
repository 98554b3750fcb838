"""What host errors mean for CSI: the engine's one translation of them."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from aiocsi.errors import (
    CommandFailed,
    FailedPrecondition,
    HostFailure,
    Internal,
    ResourceExhausted,
)
from aiocsi.host import fs, syscalls
from aiocsi.host.errors import HostConflict, HostObjectMissing

if TYPE_CHECKING:
    from aiocsi.engine.space import SpaceWatch

# What commands say when a write to the pool's filesystem failed for space.
_NO_SPACE_WORDS = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))
_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_no_space(exc: BaseException) -> bool:
    """Whether a host failure means the pool's filesystem is out of space (or quota)."""
    if isinstance(exc, OSError | syscalls.SystemCallFailed):
        return exc.errno in _NO_SPACE_ERRNOS
    if isinstance(exc, CommandFailed):
        return any(words in exc.stderr for words in _NO_SPACE_WORDS)
    return False


def is_io_error(exc: BaseException) -> bool:
    """Whether a host failure is an I/O error (how a loop device reports most failures)."""
    if isinstance(exc, OSError | syscalls.SystemCallFailed):
        return exc.errno == errno.EIO
    return isinstance(exc, CommandFailed) and os.strerror(errno.EIO) in exc.stderr


def host_failure(what: str, exc: HostFailure) -> Internal | ResourceExhausted | FailedPrecondition:
    if isinstance(exc, syscalls.LoopDevicesExhausted):
        return ResourceExhausted(f"{what}: no free loop device on this node")
    if isinstance(exc, fs.OnlineGrowRefused):
        # The spec's "volume in use" case: kubelet then stops retrying on this node and
        # expands again after the next stage, which grows the filesystem unmounted.
        return FailedPrecondition(
            f"{what}: the kernel refused to grow the mounted ext4 filesystem because this "
            "driver lacks CAP_SYS_RESOURCE. The device has grown; the filesystem will be "
            "grown to fill it when the volume is next staged (unpublish and unstage it)"
        )
    if isinstance(exc, HostConflict | HostObjectMissing):
        # Not a fault of the host: it is not in the state this call needs, and says why.
        return FailedPrecondition(str(exc))
    return Internal(f"{what}: {exc}")


@contextlib.contextmanager
def host_step(what: str) -> Iterator[None]:
    try:
        yield
    except HostFailure as exc:
        raise host_failure(what, exc) from exc


@contextlib.asynccontextmanager
async def pool_write_step(what: str, space: SpaceWatch, device: str) -> AsyncIterator[None]:
    """`host_step` for work that writes through `device` into the pool (mkfs, a grow): a
    failure because the pool filesystem ran out of space is RESOURCE_EXHAUSTED."""
    try:
        yield
    except HostFailure as exc:
        if await space.ran_out(exc, device):
            raise ResourceExhausted(
                f"{what}: the pool filesystem {space.pool.root} is out of space, so the "
                f"volume's image could not grow ({exc})"
            ) from exc
        raise host_failure(what, exc) from exc
