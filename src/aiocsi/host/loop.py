"""Loop devices: attached and detached through the loop ioctls (host/syscalls.py), found
through sysfs (host/sysfs.py) by a `LoopIndex` that remembers which device backs which image.

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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import structlog

from aiocsi.host import files, syscalls
from aiocsi.host.errors import HostConflict, HostObjectMissing
from aiocsi.host.sysfs import (
    DELETED_SUFFIX,
    all_loop_backing_files,
    backing_file_of,
    sysfs_dir,
)
from aiocsi.host.sysfs import is_read_only as sysfs_is_read_only

if TYPE_CHECKING:
    from collections.abc import Callable

    from aiocsi.threads import WorkerPool

# Re-exported: the test harness's leak guard reads it from here.
__all__ = ["Attachment", "ImageMissing", "LoopDeviceBusy", "LoopIndex", "all_loop_backing_files"]

_log = structlog.get_logger("aiocsi.host")

# ENXIO (not attached), ENODEV and ENOENT (no such loop device at all).
_NOT_ATTACHED = (errno.ENXIO, errno.ENODEV, errno.ENOENT)

# LOOP_CONFIGURE has returned once a device is attached; give sysfs a moment to agree so
# that a look-up right after attach never misses the device and attaches the image again.
# After a detach, a short-lived opener (udev probing the device) delays the actual clear.
_SYSFS_SETTLE_TRIES = 50
_SYSFS_SETTLE_DELAY_S = 0.01


class LoopDeviceBusy(HostConflict):
    """The device is still open (mounted?): the kernel will detach it at its last close."""


class ImageMissing(HostObjectMissing):
    """The image to attach does not exist (a device may still hold its deleted inode)."""


class LoopModeConflict(HostConflict):
    """The image is already attached in the other mode (read-only vs read-write)."""


@dataclass(frozen=True)
class Attachment:
    device: str
    new: bool  # attached by this call, not found attached
    # New, and the image held no data when it was attached: nothing on it to probe.
    blank: bool = False


def _image_key(image: Path) -> str:
    """The string sysfs shows for `image`. Callers pass canonical paths (the pool resolves
    its directories once), so nothing is resolved here."""
    key = os.path.normpath(image)  # absolute: callers build it from the pool's root
    if key.endswith(DELETED_SUFFIX):
        # sysfs could not tell this live file from a deleted one, so it cannot be tracked.
        raise ValueError(f"image names must not end with {DELETED_SUFFIX!r}: {key}")
    return key


def _wanted(key: str) -> set[str]:
    # Looked at after sysfs: an image removed in between shows there still as itself.
    return {key} if os.path.lexists(key) else {key, key + DELETED_SUFFIX}


def _attach_sync(backing: str, *, read_only: bool) -> str:
    # Buffered: a view must read through the page cache of the device below it.
    return syscalls.attach_loop(backing, read_only=read_only)


async def _backing_settles(directory: Path, settled: Callable[[str | None], bool]) -> bool:
    """Wait briefly until the backing file sysfs shows in `directory` (None: detached) is
    `settled`."""
    for _ in range(_SYSFS_SETTLE_TRIES):
        if settled(backing_file_of(directory)):
            return True
        await anyio.sleep(_SYSFS_SETTLE_DELAY_S)
    return False


async def _settled(device: str, backing: str) -> str:
    if not await _backing_settles(sysfs_dir(device), lambda shown: shown == backing):
        _log.warning("loop_sysfs_not_settled", device=device, backing=backing)
    return device


class LoopIndex:
    """Attach, detach and find loop devices; remembers the device last seen backing each
    image. That is only a hint: every use checks sysfs for that one device, and a stale
    hint falls back to the full scan."""

    def __init__(self, workers: WorkerPool) -> None:
        self._workers = workers
        self._hints: dict[str, str] = {}

    def devices_for(self, image: Path) -> list[str]:
        """The loop devices backed by `image` (normally zero or one).

        An image unlinked while attached still backs its device, which sysfs then shows as
        "<path> (deleted)": such a device counts as long as nothing new sits at the path. A
        new file there is another image, which the device of the old one never matches.
        """
        key = _image_key(image)
        hinted = self._hints.get(key)
        if hinted is not None:
            # One sysfs read instead of one per attached device: under churn there are dozens.
            backing = backing_file_of(sysfs_dir(hinted))
            if backing is not None and backing in _wanted(key):
                return [hinted]
            self._hints.pop(key, None)
        backing_files = all_loop_backing_files()
        wanted = _wanted(key)
        found = [dev for dev, backing in backing_files.items() if backing in wanted]
        if found:
            self._hints[key] = found[0]
        return found

    def _forget_device(self, device: str) -> None:
        for key in [key for key, hinted in self._hints.items() if hinted == device]:
            self._hints.pop(key, None)

    def _devices_of_present_image(self, image: Path) -> list[str]:
        """The devices backing `image`; `ImageMissing` when it does not exist (any more)."""
        devices = self.devices_for(image)
        if not os.path.lexists(image):
            held = f" (deleted, still held by {', '.join(devices)})" if devices else ""
            raise ImageMissing(f"cannot attach {image}: it does not exist{held}")
        return devices

    def _attach_image_sync(self, key: str, *, read_only: bool) -> tuple[list[str], str, bool]:
        """(devices already backing the image, or else: the new device, whether it is blank)."""
        existing = self._devices_of_present_image(Path(key))
        if existing:
            return existing, "", False
        blank = not files.holds_data_sync(Path(key))
        return [], _attach_sync(key, read_only=read_only), blank

    async def attach(self, image: Path, *, read_only: bool = False) -> Attachment:
        """Ensure `image` is attached to a loop device; return the device ("/dev/loopN").

        An image that already backs a loop device is never attached a second time. A
        missing image is refused, even while a device still holds it deleted: that device
        serves a file nobody can reach any more, and must be released, not handed out again.

        Look-up, check and attach are one worker-thread call: the look-up reads the backing
        file of every attached device, dozens under churn.
        """
        key = _image_key(image)
        existing, device, blank = await self._workers.run_sync(
            functools.partial(self._attach_image_sync, key, read_only=read_only)
        )
        if existing:
            return Attachment(_one_of(Path(key), existing, read_only=read_only), new=False)
        self._hints[key] = await _settled(device, key)
        return Attachment(device, new=True, blank=blank)

    async def attach_view(self, device: str) -> str:
        """Attach a new read-only view of loop device `device` and return it."""
        sysfs_dir(device)  # refuses anything but a loop device
        view = await self._workers.run_sync(functools.partial(_attach_sync, device, read_only=True))
        return await _settled(view, device)

    async def detach(self, device: str) -> None:
        """Ensure `device` is detached; a device that is not attached (any more) is fine.

        LOOP_CLR_FD succeeds on a device that is still open (mounted) and the kernel only
        marks it to detach at its last close. That is reported as `LoopDeviceBusy`, so that
        the caller does not go on to delete an image that is still in use. Unmount first.

        Detached means no longer backed by what it was, not unbacked: the kernel detaches
        at the close that ends LOOP_CLR_FD, and hands the freed number to the very next
        attacher (another volume's stage, under churn), which that one keeps for as long as
        it stays staged.
        """
        directory = sysfs_dir(device)
        self._forget_device(device)
        backing = backing_file_of(directory)
        if backing is None:
            return
        try:
            await self._workers.run_sync(syscalls.detach_loop, device)
        except syscalls.SystemCallFailed as exc:
            # Someone may have detached it between the look and the act.
            if exc.errno not in _NOT_ATTACHED:
                raise
        if not await _backing_settles(directory, lambda shown: shown != backing):
            raise LoopDeviceBusy(f"{device} is still in use; it detaches when last closed")

    async def refresh_size(self, device: str) -> None:
        """Make the loop device pick up a grown backing file (on the device, not the file).

        Views follow a grown device the same way: refresh the device first, then its views.
        """
        sysfs_dir(device)  # refuses anything but a loop device
        await self._workers.run_sync(syscalls.refresh_loop_size, device)


def _one_of(image: Path, devices: list[str], *, read_only: bool) -> str:
    """The device to use of those backing `image`; refuses one in the other mode."""
    if len(devices) > 1:
        _log.warning("loop_attached_twice", image=str(image), devices=devices)
    device = devices[0]
    if sysfs_is_read_only(device) != read_only:
        existing_mode = "read-write" if read_only else "read-only"
        raise LoopModeConflict(f"{image} is already attached as {device} {existing_mode}")
    return device
