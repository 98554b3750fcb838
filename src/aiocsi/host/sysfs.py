"""Loop devices as sysfs and procfs show them: backing files, sizes, modes, device nodes.

Sysfs is read instead of running `losetup -j`/`-l`. Sysfs lives in kernel memory: a read
never waits for a disk and takes microseconds, less than a hop to a worker thread, so these
readers run on the event loop (a scan of 100 loop devices costs about 0.2 ms).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from aiocsi.host import files

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from aiocsi.host.mount import MountEntry

SYS_BLOCK = Path("/sys/block")
_PARTITIONS = "/proc/partitions"
LOOP_NAME = re.compile(r"loop(\d+)")
# The kernel appends this to the path of a backing file that has been unlinked.
DELETED_SUFFIX = " (deleted)"
SECTOR_SIZE = 512


def sysfs_dir(device: str) -> Path:
    """The sysfs directory of loop device `device`; ValueError for anything else."""
    name = Path(device).name
    if not LOOP_NAME.fullmatch(name):
        raise ValueError(f"not a loop device: {device!r}")
    return SYS_BLOCK / name


def _read_backing_file(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        # No "loop" directory means not attached.
        return None
    try:
        raw = os.read(fd, 8192)
    except OSError:
        return None  # detached while we read
    finally:
        os.close(fd)
    return os.fsdecode(raw.removesuffix(b"\n"))


def backing_file_of(directory: Path) -> str | None:
    """The backing file sysfs shows in a loop device's `directory`; None: not attached."""
    return _read_backing_file(f"{directory}/loop/backing_file")


def _sized_loop_names() -> list[str]:
    """Loop devices with a size: /proc/partitions leaves out the unattached ones.

    The kernel keeps every loop device it ever made (often dozens), so asking each of them
    costs milliseconds; this costs one read.
    """
    try:
        lines = files.read_proc(_PARTITIONS).decode().splitlines()
    except OSError:
        return [entry.name for entry in os.scandir(SYS_BLOCK)]
    # "major minor #blocks name", after a header line and a blank one.
    return [fields[-1] for fields in (line.split() for line in lines[2:]) if fields]


def all_loop_backing_files() -> dict[str, str]:
    """Map every attached loop device ("/dev/loopN") to its backing file, by device number."""
    numbered = []
    for name in _sized_loop_names():
        match = LOOP_NAME.fullmatch(name)
        if match:
            numbered.append((int(match.group(1)), name))
    found: dict[str, str] = {}
    for _, name in sorted(numbered):
        backing = _read_backing_file(f"{SYS_BLOCK}/{name}/loop/backing_file")
        if backing is not None:
            found[f"/dev/{name}"] = backing
    return found


def backing_file(device: str) -> str | None:
    """The file (or device, for a view) backing `device`; None when it is not attached."""
    return backing_file_of(sysfs_dir(device))


def attached_path(backing: str) -> str:
    """The path a backing file was attached by, also once it has been unlinked."""
    return backing.removesuffix(DELETED_SUFFIX)


def is_read_only(device: str) -> bool:
    return (sysfs_dir(device) / "ro").read_text().strip() == "1"


def device_size_bytes(device: str) -> int:
    # sysfs counts 512-byte sectors whatever the device's logical block size.
    return int((sysfs_dir(device) / "size").read_text()) * SECTOR_SIZE


def views_on(device: str, backing_files: Mapping[str, str]) -> list[str]:
    """The views (read-only loop devices) stacked on `device`, from a backing-file map."""
    return [view for view, backing in backing_files.items() if backing == device]


def loop_device_of(path: Path) -> str | None:
    """The loop device whose node sits at `path` (a bind of one, say), or None."""
    try:
        info = path.stat()
    except OSError:
        return None
    if not stat.S_ISBLK(info.st_mode):
        return None
    number = f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}"
    name = Path(os.path.realpath(f"/sys/dev/block/{number}")).name
    return f"/dev/{name}" if LOOP_NAME.fullmatch(name) else None


def mountinfo_line_of_use(line: str, devices: Iterable[str]) -> bool:
    """Whether a mountinfo line may show a use of one of `devices` ("/dev/loopN"): a mount
    of one, or a bind of a device node named like one (a block publication; which device
    the node really is, a stat tells later).

    A node of the same device under another name is not looked for: the detach that
    follows then finds the device busy and says so, instead of a stat of every bind.
    """
    if any(f" {device} " in line for device in devices):
        return True
    root = line.split(" ", 4)[3]
    name = root.rpartition("/")[2]
    return any(device.rpartition("/")[2] == name for device in devices)


def loop_node_mounts(mounts: Iterable[MountEntry]) -> list[MountEntry]:
    """The mounts whose root names a loop device node: the candidates for binds of one."""
    return [entry for entry in mounts if LOOP_NAME.fullmatch(Path(entry.root).name)]


def bound_loop_devices(mounts: Iterable[MountEntry]) -> dict[str, str]:
    """Mount point -> loop device, for every bind of a loop device node (a block publication).

    Only mounts whose root names a loop device node are looked at: a stat of an unrelated
    (network) mount point could hang. The device is told by its number, not by that name.
    """
    bound: dict[str, str] = {}
    for entry in loop_node_mounts(mounts):
        device = loop_device_of(Path(entry.mount_point))
        if device is not None:
            bound[entry.mount_point] = device
    return bound
