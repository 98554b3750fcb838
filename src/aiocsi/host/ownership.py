"""The group of a mounted filesystem's root directory (CSI volume_mount_group).

Only the root directory changes: its group, the setgid bit (so that what is created in it
inherits the group, and new directories the bit) and group read, write and search. Nothing
below it is touched: no recursive walk, however many files the volume holds.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from aiocsi.host.syscalls import SystemCallFailed

if TYPE_CHECKING:
    from pathlib import Path

    from aiocsi.threads import WorkerPool

# Leave the owner as it is (chown(2)'s -1).
_KEEP_OWNER = -1
GROUP_BITS = stat.S_ISGID | stat.S_IRWXG


def give_group_sync(root: Path, gid: int) -> None:
    """Give the directory `root` the group `gid`, setgid and group rwx. Blocks.

    Through one descriptor opened without following a symlink, so the change lands on the
    directory that was checked, whatever is renamed meanwhile.
    """
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SystemCallFailed("open", str(root), exc.errno or 0) from exc
    try:
        try:
            os.fchown(fd, _KEEP_OWNER, gid)
            # Read after the chown, which may clear set-id bits: the chmod sets them again.
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            os.fchmod(fd, mode | GROUP_BITS)
        except OSError as exc:
            raise SystemCallFailed("chown/chmod", f"{root} to group {gid}", exc.errno or 0) from exc
    finally:
        os.close(fd)


async def give_group(workers: WorkerPool, root: Path, gid: int) -> None:
    await workers.run_sync(give_group_sync, root, gid)
