"""Filesystems on block devices: probe, make, grow, and space statistics."""

from __future__ import annotations

import fcntl
import os
import struct
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from aiocsi.errors import CommandFailed
from aiocsi.host import superblock
from aiocsi.host.process import run

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from aiocsi.threads import WorkerPool

_MIB = 1024 * 1024

# Smallest volume size per filesystem, measured on e2fsprogs 1.47.0, xfsprogs 6.1.0,
# btrfs-progs 6.2 and Linux 6.18, rounded up so that a newer mkfs with slightly larger
# metadata still fits. ext4 formats from 128 KiB but only gets a journal from 2 MiB;
# 4 MiB leaves room for data next to it.
# xfsprogs >= 5.19 refuses anything under 300 MiB. mkfs.btrfs accepts 109 MiB, but the
# kernel refuses to resize a btrfs to less than 256 MiB: a smaller volume could not be
# expanded by a little, only to 256 MiB or more.
MIN_FS_SIZE: Mapping[str, int] = MappingProxyType(
    {
        "ext4": 4 * _MIB,
        "xfs": 300 * _MIB,
        "btrfs": 256 * _MIB,
    }
)

# blkid's exit code when the device carries no recognisable signature.
_BLKID_NOTHING_FOUND = 2

# Discards are skipped everywhere: on a fresh sparse image they only cost time.
# ext4 initialises inode tables and journal lazily so formatting stays fast and the image
# sparse at any size. mke2fs overwrites an existing filesystem whenever stdin is not a
# terminal, -F or not, so callers probe first. xfs and btrfs get no -f: they refuse to
# overwrite an existing signature.
_MKFS_ARGV: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "ext4": (
            "mkfs.ext4",
            "-F",
            "-q",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
            "-m",
            "0",
        ),
        "xfs": ("mkfs.xfs", "-q", "-K"),
        "btrfs": ("mkfs.btrfs", "-q", "-K"),
    }
)

SUPPORTED_FS_TYPES = frozenset(_MKFS_ARGV)


async def probe_fs_type(workers: WorkerPool, device: str) -> str | None:
    """The filesystem signature on `device`, read from the device itself (never blkid's cache)."""
    done = await run(
        workers,
        ["blkid", "-p", "-o", "value", "-s", "TYPE", device],
        ok_codes=(0, _BLKID_NOTHING_FOUND),
    )
    return done.stdout.strip() or None


async def make_fs(workers: WorkerPool, device: str, fs_type: str) -> None:
    """Format `device`. xfs and btrfs refuse an existing signature; mke2fs does not: probe first."""
    if fs_type not in _MKFS_ARGV:
        raise ValueError(f"unsupported filesystem type {fs_type!r}")
    await run(workers, [*_MKFS_ARGV[fs_type], device])


# e2fsck's exit codes for "nothing wrong" and "errors fixed".
_FSCK_CLEAN = (0, 1)
# resize2fs's words for EPERM from EXT4_IOC_RESIZE_FS (commands run in the C locale).
_RESIZE_NOT_PERMITTED = "Permission denied to resize filesystem"


class OnlineGrowRefused(CommandFailed):
    """The kernel refused to grow a mounted ext4: the caller lacks CAP_SYS_RESOURCE.

    Growing it unmounted (`grow_offline`) needs no such capability.
    """


def _grow_argv(device: str, mount_point: Path, fs_type: str) -> list[str]:
    # resize2fs works on the device; the xfs and btrfs tools only on the mounted path.
    match fs_type:
        case "ext4":
            return ["resize2fs", device]
        case "xfs":
            return ["xfs_growfs", str(mount_point)]
        case "btrfs":
            return ["btrfs", "filesystem", "resize", "max", str(mount_point)]
        case _:
            raise ValueError(f"unsupported filesystem type {fs_type!r}")


async def grow_fs(workers: WorkerPool, device: str, mount_point: Path, fs_type: str) -> None:
    """Grow a mounted filesystem to fill its (already refreshed) device.

    Raises `OnlineGrowRefused` when the kernel refuses an ext4 for lack of privilege.
    """
    done = await run(workers, _grow_argv(device, mount_point, fs_type), check=False)
    if done.returncode == 0:
        return
    if fs_type == "ext4" and _RESIZE_NOT_PERMITTED in done.stderr:
        raise OnlineGrowRefused(done.argv, done.returncode, done.stderr)
    raise CommandFailed(done.argv, done.returncode, done.stderr)


# Filesystems whose grow tool also works unmounted; the others grow only while mounted.
GROWS_OFFLINE = frozenset({"ext4"})


async def grow_offline(workers: WorkerPool, device: str, fs_type: str) -> None:
    """Grow an unmounted filesystem to fill its device.

    resize2fs refuses a filesystem mounted since its last full check, so it is checked
    first; a check that fixed something is fine, one that could not is a failure.
    """
    if fs_type not in GROWS_OFFLINE:
        raise ValueError(f"{fs_type!r} can only be grown while mounted")
    await run(workers, ["e2fsck", "-f", "-p", device], ok_codes=_FSCK_CLEAN)
    await run(workers, ["resize2fs", device])


def _read_superblock(device: str, fs_type: str) -> tuple[bytes, int]:
    """The superblock bytes of `device` and the device's size."""
    if fs_type not in superblock.LOCATION:
        raise ValueError(f"unsupported filesystem type {fs_type!r}")
    offset, length = superblock.LOCATION[fs_type]
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        raw = os.pread(fd, length, offset)
        size = os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)
    return raw, size


def _can_grow_sync(device: str, fs_type: str) -> bool:
    raw, size = _read_superblock(device, fs_type)
    return superblock.can_grow(fs_type, raw, size, os.sysconf("SC_PAGESIZE"))


# <xfs/xfs_fs.h>: _IOR('X', 100, struct xfs_fsop_geom_v1), 112 bytes; every kernel has it.
_XFS_IOC_FSGEOMETRY_V1 = 0x80705864
_XFS_GEOMETRY_V1 = struct.Struct("=I28xQ72x")  # blocksize ... datablocks ...


def _xfs_bytes_sync(mount_point: Path) -> int:
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        raw = fcntl.ioctl(fd, _XFS_IOC_FSGEOMETRY_V1, bytes(_XFS_GEOMETRY_V1.size))
    finally:
        os.close(fd)
    block_size, data_blocks = _XFS_GEOMETRY_V1.unpack(raw)
    return int(block_size * data_blocks)


def filesystem_bytes_sync(device: str, fs_type: str, mount_point: Path) -> int:
    """The size the filesystem on `device`, mounted at `mount_point`, spans (blocking).

    From the superblock, which ext4 and btrfs keep current through the device's page
    cache; xfs writes its own buffers, so a grow shows on disk only later: its live
    geometry comes from the mounted filesystem instead.
    """
    if fs_type == "xfs":
        return _xfs_bytes_sync(mount_point)
    raw, _ = _read_superblock(device, fs_type)
    return superblock.size_bytes(fs_type, raw)


async def can_grow(workers: WorkerPool, device: str, fs_type: str) -> bool:
    """Whether growing the filesystem on `device` would give it more of the device.

    Read from the superblock, so it costs no process. On a mounted xfs or btrfs the
    on-disk superblock may lag a grow just done: the answer can then be a needless "yes",
    never a wrong "no".
    """
    return await workers.run_sync(_can_grow_sync, device, fs_type)


@dataclass(frozen=True)
class FsStats:
    total_bytes: int
    available_bytes: int
    used_bytes: int
    total_inodes: int
    free_inodes: int
    used_inodes: int


def _fs_stats_sync(path: Path) -> FsStats:
    st = os.statvfs(path)
    # btrfs allocates inodes dynamically and reports 0 of each: passed on as-is.
    return FsStats(
        total_bytes=st.f_blocks * st.f_frsize,
        available_bytes=st.f_bavail * st.f_frsize,
        used_bytes=(st.f_blocks - st.f_bfree) * st.f_frsize,
        total_inodes=st.f_files,
        free_inodes=st.f_ffree,
        used_inodes=st.f_files - st.f_ffree,
    )


async def fs_stats(workers: WorkerPool, path: Path) -> FsStats:
    return await workers.run_sync(_fs_stats_sync, path)
