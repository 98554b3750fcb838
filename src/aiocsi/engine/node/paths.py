"""Paths of node calls and what is mounted on them: canonical paths under the allowed
roots, which mounts are a volume's own, and the targets a call made and may remove."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aiocsi.errors import FailedPrecondition
from aiocsi.host import files, mount, sysfs
from aiocsi.threads import WorkerPool

# Stacked mounts are possible; more than this many of ours at one path is not a real case.
MAX_STACKED_MOUNTS = 16


@dataclass(frozen=True)
class Points:
    """The canonical paths of a publish call: mountinfo shows mount points resolved."""

    staging: Path
    target: Path


def resolve_under(path: Path, roots: Sequence[Path]) -> Path | None:
    """`path` resolved; None when it resolves outside every root (no roots: anywhere)."""
    resolved = files.canonical_sync(path)
    if not roots:
        return resolved
    for root in roots:
        real_root = files.canonical_sync(root)
        if resolved != real_root and resolved.is_relative_to(real_root):
            return resolved
    return None


def is_ours_sync(entry: mount.MountEntry, path: Path, device: str | None) -> bool:
    # A block publication binds the device node (or a read-only view's): its source is the
    # filesystem holding /dev (devtmpfs), so look at the node itself instead.
    return device is not None and (entry.source == device or shows_device(path, device))


def unmount_ours_sync(point: Path, device: str | None, *, remove_target: bool) -> None:
    """`NodeVolumes._unmount_ours` in a worker thread: every step blocks, none waits long."""
    for _ in range(MAX_STACKED_MOUNTS):
        entries = mount.mounts_at_point(point)
        if not entries:
            break
        top = entries[-1]
        if not is_ours_sync(top, point, device):
            raise FailedPrecondition(
                f"{point} has a mount of {top.source} that does not belong to this volume"
            )
        mount.unmount_sync(point)
    else:
        raise FailedPrecondition(f"{point} is still mounted after {MAX_STACKED_MOUNTS} unmounts")
    if remove_target:
        remove_target_sync(point)


def shows_device(path: Path, device: str) -> bool:
    """Whether `path` is the node of `device`, or of a read-only view stacked on it."""
    shown = sysfs.loop_device_of(path)
    return shown is not None and (shown == device or sysfs.backing_file(shown) == device)


def refuses_writes(entry: mount.MountEntry, path: Path) -> bool:
    """Whether the mount `entry` at `path` refuses writes: for a device node, the device must."""
    if not entry.read_only:
        return False
    shown = sysfs.loop_device_of(path)
    return shown is None or sysfs.is_read_only(shown)


async def remove_path(workers: WorkerPool, path: Path) -> None:
    """Remove an empty directory or an empty file we made; gone is fine."""
    await workers.run_sync(files.remove_empty_sync, path)


def remove_target_sync(path: Path) -> None:
    try:
        files.remove_empty_sync(path)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            # Not a mount any more, yet it holds files: never delete what may be data.
            raise FailedPrecondition(
                f"{path} is not mounted but not empty; it is left for an operator"
            ) from exc
        raise


async def remove_empty_target(workers: WorkerPool, path: Path) -> None:
    await workers.run_sync(remove_target_sync, path)
