"""Freezing a mounted filesystem (FIFREEZE/FITHAW, what fsfreeze(8) does).

A frozen filesystem has flushed everything to its device and blocks every new write
until it is thawed, so an image of its device taken meanwhile is crash-consistent. The
kernel keeps a filesystem frozen when the freezing process exits: whoever freezes must
thaw (engine/groups.py), and a crash in between is thawed by the start-up reconcile.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING

from aiocsi.host.errors import HostConflict
from aiocsi.host.syscalls import SystemCallFailed

if TYPE_CHECKING:
    from collections.abc import Iterable

# _IOWR('X', 119, int) and _IOWR('X', 120, int) from <linux/fs.h>.
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878


def _ioctl(path: str, devices: Iterable[str], request: int, call: str) -> None:
    """Issue `request` on the filesystem at `path`, only if it lives on one of `devices`:
    a staging path unmounted by hand would otherwise freeze the filesystem below it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SystemCallFailed("open", path, exc.errno or errno.EIO) from None
    try:
        wanted = {Path(device).stat().st_rdev for device in devices}
        if os.fstat(fd).st_dev not in wanted:
            raise HostConflict(f"{path} is not a mount of {', '.join(devices) or 'its device'}")
        fcntl.ioctl(fd, request, 0)
    except OSError as exc:
        raise SystemCallFailed(call, path, exc.errno or errno.EIO) from None
    finally:
        os.close(fd)


def freeze_sync(mount_point: str, devices: Iterable[str]) -> None:
    """Freeze the filesystem of one of `devices` mounted at `mount_point`; raises
    `SystemCallFailed` (EBUSY: frozen already, EOPNOTSUPP: it cannot be frozen) or
    `HostConflict` (something else is mounted there)."""
    _ioctl(mount_point, devices, FIFREEZE, "FIFREEZE")


def thaw_sync(mount_point: str, devices: Iterable[str]) -> bool:
    """Thaw the filesystem of one of `devices` mounted at `mount_point`; False if it was
    not frozen."""
    try:
        _ioctl(mount_point, devices, FITHAW, "FITHAW")
    except SystemCallFailed as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    return True
