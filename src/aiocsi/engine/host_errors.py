"""What host errors mean for CSI: the engine's one translation of them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from aiocsi.errors import FailedPrecondition, HostFailure, Internal, ResourceExhausted
from aiocsi.host import fs, syscalls
from aiocsi.host.errors import HostConflict, HostObjectMissing


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
