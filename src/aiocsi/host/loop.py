"""Loop devices: attach/detach through the loop ioctls (host/syscalls.py), look-ups through
sysfs.

Sysfs is read instead of running `losetup -j`/`-l`. Sysfs lives in kernel memory: a read
never waits for a disk and takes microseconds, less than a hop to a worker thread, so the
look-ups here run on the event loop (a scan of 100 loop devices costs about 0.2 ms).

A *view* is a read-only loop device stacked on another loop device. A read-only bind of a
device node does not stop writes through it, a read-only device does. A view reads through
the page cache of the device below, so it sees writes made there at once; but it has a page
cache of its own, so a reader that keeps the view open across someone else's writes must
read with O_DIRECT to see them (as with any block device shared between two hosts).
"""

from __future__ import annotations

import errno
import functools
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import structlog

from aiocsi import threads
from aiocsi.errors import FailedPrecondition
from aiocsi.host import files, syscalls

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from aiocsi.host.mount import MountEntry

_log = structlog.get_logger("aiocsi.host")

_SYS_BLOCK = Path("/sys/block")
_PARTITIONS = "/proc/partitions"
_LOOP_NAME = re.compile(r"loop(\d+)")
# The kernel appends this to the path of a backing file that has been unlinked.
_DELETED_SUFFIX = " (deleted)"
SECTOR_SIZE = 512

# ENXIO (not attached), ENODEV and ENOENT (no such loop device at all).
_NOT_ATTACHED = (errno.ENXIO, errno.ENODEV, errno.ENOENT)

# LOOP_CONFIGURE has returned once a device is attached; give sysfs a moment to agree so
# that a look-up right after attach never misses the device and attaches the image again.
# After a detach, a short-lived opener (udev probing the device) delays the actual clear.
_SYSFS_SETTLE_TRIES = 50
_SYSFS_SETTLE_DELAY_S = 0.01


class LoopDeviceBusy(FailedPrecondition):
    """The device is still open (mounted?): the kernel will detach it at its last close."""


class ImageMissing(FailedPrecondition):
    """The image to attach does not exist (a device may still hold its deleted inode)."""


def _sysfs_dir(device: str) -> Path:
    name = Path(device).name
    if not _LOOP_NAME.fullmatch(name):
        raise ValueError(f"not a loop device: {device!r}")
    return _SYS_BLOCK / name


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


def _backing_file_of(sysfs_dir: Path) -> str | None:
    return _read_backing_file(f"{sysfs_dir}/loop/backing_file")


def _sized_loop_names() -> list[str]:
    """Loop devices with a size: /proc/partitions leaves out the unattached ones.

    The kernel keeps every loop device it ever made (often dozens), so asking each of them
    costs milliseconds; this costs one read.
    """
    try:
        lines = files.read_proc(_PARTITIONS).decode().splitlines()
    except OSError:
        return [entry.name for entry in os.scandir(_SYS_BLOCK)]
    # "major minor #blocks name", after a header line and a blank one.
    return [fields[-1] for fields in (line.split() for line in lines[2:]) if fields]


def all_loop_backing_files() -> dict[str, str]:
    """Map every attached loop device ("/dev/loopN") to its backing file, by device number."""
    numbered = []
    for name in _sized_loop_names():
        match = _LOOP_NAME.fullmatch(name)
        if match:
            numbered.append((int(match.group(1)), name))
    found: dict[str, str] = {}
    for _, name in sorted(numbered):
        backing = _read_backing_file(f"{_SYS_BLOCK}/{name}/loop/backing_file")
        if backing is not None:
            found[f"/dev/{name}"] = backing
    return found


async def loop_backing_files() -> dict[str, str]:
    return all_loop_backing_files()


def backing_file(device: str) -> str | None:
    """The file (or device, for a view) backing `device`; None when it is not attached."""
    return _backing_file_of(_sysfs_dir(device))


def attached_path(backing: str) -> str:
    """The path a backing file was attached by, also once it has been unlinked."""
    return backing.removesuffix(_DELETED_SUFFIX)


# Image -> the loop device last seen backing it. Only a hint: every use checks sysfs for
# that one device, and a stale hint falls back to the full scan.
_hints: dict[str, str] = {}


def _image_key(image: Path) -> str:
    """The string sysfs shows for `image`. Callers pass canonical paths (the pool resolves its
    directories once): resolving here walked the filesystem on every look-up."""
    key = os.path.normpath(image)  # absolute: callers build it from the pool's root
    if key.endswith(_DELETED_SUFFIX):
        # sysfs could not tell this live file from a deleted one, so it cannot be tracked.
        raise ValueError(f"image names must not end with {_DELETED_SUFFIX!r}: {key}")
    return key


def loop_devices_for(image: Path) -> list[str]:
    """The loop devices backed by `image` (normally zero or one).

    An image unlinked while attached still backs its device, which sysfs then shows as
    "<path> (deleted)": such a device counts as long as nothing new sits at the path. A new
    file there is another image, which the device of the old one never matches.
    """
    key = _image_key(image)
    hinted = _hints.get(key)
    if hinted is not None:
        # One sysfs read instead of one per attached device: under churn there are dozens.
        backing = _backing_file_of(_sysfs_dir(hinted))
        if backing is not None and backing in _wanted(key):
            return [hinted]
        _hints.pop(key, None)
    backing_files = all_loop_backing_files()
    wanted = _wanted(key)
    found = [dev for dev, backing in backing_files.items() if backing in wanted]
    if found:
        _hints[key] = found[0]
    return found


def _wanted(key: str) -> set[str]:
    # Looked at after sysfs: an image removed in between shows there still as itself.
    return {key} if os.path.lexists(key) else {key, key + _DELETED_SUFFIX}


def _forget_device(device: str) -> None:
    for key in [key for key, hinted in _hints.items() if hinted == device]:
        _hints.pop(key, None)


async def find_loop_devices(image: Path) -> list[str]:
    return loop_devices_for(image)


def is_read_only(device: str) -> bool:
    return (_sysfs_dir(device) / "ro").read_text().strip() == "1"


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
    return f"/dev/{name}" if _LOOP_NAME.fullmatch(name) else None


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
    return [entry for entry in mounts if _LOOP_NAME.fullmatch(Path(entry.root).name)]


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


def _devices_of_present_image(image: Path) -> list[str]:
    """The devices backing `image`; `ImageMissing` when it does not exist (any more)."""
    devices = loop_devices_for(image)
    if not os.path.lexists(image):
        held = f" (deleted, still held by {', '.join(devices)})" if devices else ""
        raise ImageMissing(f"cannot attach {image}: it does not exist{held}")
    return devices


def _one_of(image: Path, devices: list[str], *, read_only: bool) -> str:
    """The device to use of those backing `image`; refuses one in the other mode."""
    if len(devices) > 1:
        _log.warning("loop_attached_twice", image=str(image), devices=devices)
    device = devices[0]
    if is_read_only(device) != read_only:
        existing_mode = "read-write" if read_only else "read-only"
        raise FailedPrecondition(f"{image} is already attached as {device} {existing_mode}")
    return device


async def _backing_settles(sysfs_dir: Path, expected: str | None) -> bool:
    """Wait briefly until sysfs shows `expected` as the backing file (None: detached)."""
    for _ in range(_SYSFS_SETTLE_TRIES):
        if _backing_file_of(sysfs_dir) == expected:
            return True
        await anyio.sleep(_SYSFS_SETTLE_DELAY_S)
    return False


def _attach_sync(backing: str, *, read_only: bool) -> str:
    # Buffered: a view must read through the page cache of the device below it.
    return syscalls.attach_loop(backing, read_only=read_only)


async def _settled(device: str, backing: str) -> str:
    if not await _backing_settles(_sysfs_dir(device), backing):
        _log.warning("loop_sysfs_not_settled", device=device, backing=backing)
    return device


@dataclass(frozen=True)
class Attachment:
    device: str
    new: bool  # attached by this call, not found attached
    # New, and the image held no data when it was attached: nothing on it to probe.
    blank: bool = False


def _attach_image_sync(key: str, *, read_only: bool) -> tuple[list[str], str, bool]:
    """(devices already backing the image, or else: the new device, whether it is blank)."""
    existing = _devices_of_present_image(Path(key))
    if existing:
        return existing, "", False
    blank = not files.holds_data_sync(Path(key))
    return [], _attach_sync(key, read_only=read_only), blank


async def attach(image: Path, *, read_only: bool = False) -> Attachment:
    """Ensure `image` is attached to a loop device; return the device ("/dev/loopN").

    An image that already backs a loop device is never attached a second time. A missing
    image is refused, even while a device still holds it deleted: that device serves a file
    nobody can reach any more, and must be released, not handed out again.

    Look-up, check and attach are one worker-thread call: the look-up reads the backing
    file of every attached device, dozens under churn.
    """
    key = _image_key(image)
    existing, device, blank = await threads.run_sync(
        functools.partial(_attach_image_sync, key, read_only=read_only)
    )
    if existing:
        return Attachment(_one_of(Path(key), existing, read_only=read_only), new=False)
    _hints[key] = await _settled(device, key)
    return Attachment(device, new=True, blank=blank)


async def attach_view(device: str) -> str:
    """Attach a new read-only view of loop device `device` and return it."""
    _sysfs_dir(device)  # refuses anything but a loop device
    view = await threads.run_sync(functools.partial(_attach_sync, device, read_only=True))
    return await _settled(view, device)


async def detach(device: str) -> None:
    """Ensure `device` is detached; a device that is not attached (any more) is fine.

    LOOP_CLR_FD succeeds on a device that is still open (mounted) and the kernel only marks
    it to detach at its last close. That is reported as `LoopDeviceBusy`, so that the caller
    does not go on to delete an image that is still in use. Unmount first.
    """
    sysfs_dir = _sysfs_dir(device)
    _forget_device(device)
    if _backing_file_of(sysfs_dir) is None:
        return
    try:
        await threads.run_sync(syscalls.detach_loop, device)
    except syscalls.SystemCallFailed as exc:
        # Someone may have detached it between the look and the act.
        if exc.errno not in _NOT_ATTACHED:
            raise
    if not await _backing_settles(sysfs_dir, None):
        raise LoopDeviceBusy(f"{device} is still in use; it detaches when last closed")


async def refresh_size(device: str) -> None:
    """Make the loop device pick up a grown backing file (always on the device, not the file).

    Views follow a grown device the same way: refresh the device first, then its views.
    """
    _sysfs_dir(device)  # refuses anything but a loop device
    await threads.run_sync(syscalls.refresh_loop_size, device)


def device_size_bytes(device: str) -> int:
    # sysfs counts 512-byte sectors whatever the device's logical block size.
    return int((_sysfs_dir(device) / "size").read_text()) * SECTOR_SIZE


async def device_size(device: str) -> int:
    return device_size_bytes(device)
