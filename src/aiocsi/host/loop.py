"""Loop devices: attach/detach through losetup, look-ups through sysfs.

Sysfs is read instead of running `losetup -j`/`-l`: reading a few small files in a thread
is much cheaper than spawning a process from the event loop.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import anyio
import structlog

from aiocsi.errors import CommandFailed, FailedPrecondition
from aiocsi.host.process import run

_log = structlog.get_logger("aiocsi.host")

_SYS_BLOCK = Path("/sys/block")
_LOOP_NAME = re.compile(r"loop(\d+)")
# The kernel appends this to the path of a backing file that has been unlinked.
_DELETED_SUFFIX = " (deleted)"
SECTOR_SIZE = 512

# losetup's wording differs between util-linux releases.
_NO_FREE_DEVICE = ("unused loop device", "free loop device")
# Wording of ENXIO (not attached), ENODEV and ENOENT (no such loop device at all).
_NOT_ATTACHED = ("No such device", "No such file or directory")

# losetup prints the device once LOOP_CONFIGURE returns; give sysfs a moment to agree so
# that a look-up right after attach never misses the device and attaches the image again.
# After a detach, a short-lived opener (udev probing the device) delays the actual clear.
_SYSFS_SETTLE_TRIES = 50
_SYSFS_SETTLE_DELAY_S = 0.01


class LoopDevicesExhausted(CommandFailed):
    """losetup found no free loop device and could not create one."""


class LoopDeviceBusy(FailedPrecondition):
    """The device is still open (mounted?): the kernel will detach it at its last close."""


def _loop_number(entry: Path) -> int:
    match = _LOOP_NAME.fullmatch(entry.name)
    return int(match.group(1)) if match else -1


def _sysfs_dir(device: str) -> Path:
    name = Path(device).name
    if not _LOOP_NAME.fullmatch(name):
        raise ValueError(f"not a loop device: {device!r}")
    return _SYS_BLOCK / name


def _backing_file_of(sysfs_dir: Path) -> str | None:
    try:
        raw = (sysfs_dir / "loop" / "backing_file").read_bytes()
    except OSError:
        # No "loop" directory means not attached; ENOENT mid-read means detached meanwhile.
        return None
    return os.fsdecode(raw.removesuffix(b"\n"))


def all_loop_backing_files() -> dict[str, str]:
    """Map every attached loop device ("/dev/loopN") to its backing file, by device number."""
    found: dict[str, str] = {}
    for entry in sorted(_SYS_BLOCK.glob("loop*"), key=_loop_number):
        backing = _backing_file_of(entry)
        if backing is not None:
            found[f"/dev/{entry.name}"] = backing
    return found


async def loop_backing_files() -> dict[str, str]:
    return await anyio.to_thread.run_sync(all_loop_backing_files)


def _image_key(image: Path) -> str:
    key = str(image.resolve())
    if key.endswith(_DELETED_SUFFIX):
        # sysfs could not tell this live file from a deleted one, so it cannot be tracked.
        raise ValueError(f"image names must not end with {_DELETED_SUFFIX!r}: {key}")
    return key


def loop_devices_for(image: Path) -> list[str]:
    """The loop devices backed by `image` (normally zero or one)."""
    key = _image_key(image)
    return [dev for dev, backing in all_loop_backing_files().items() if backing == key]


async def find_loop_devices(image: Path) -> list[str]:
    return await anyio.to_thread.run_sync(loop_devices_for, image)


def _is_read_only(device: str) -> bool:
    return (_sysfs_dir(device) / "ro").read_text().strip() == "1"


async def _existing_device(image: Path, *, read_only: bool) -> str | None:
    devices = await find_loop_devices(image)
    if not devices:
        return None
    if len(devices) > 1:
        _log.warning("loop_attached_twice", image=str(image), devices=devices)
    device = devices[0]
    if await anyio.to_thread.run_sync(_is_read_only, device) != read_only:
        existing_mode = "read-write" if read_only else "read-only"
        raise FailedPrecondition(f"{image} is already attached as {device} {existing_mode}")
    return device


async def _backing_settles(sysfs_dir: Path, expected: str | None) -> bool:
    """Wait briefly until sysfs shows `expected` as the backing file (None: detached)."""
    for _ in range(_SYSFS_SETTLE_TRIES):
        if await anyio.to_thread.run_sync(_backing_file_of, sysfs_dir) == expected:
            return True
        await anyio.sleep(_SYSFS_SETTLE_DELAY_S)
    return False


async def attach(image: Path, *, read_only: bool = False) -> str:
    """Ensure `image` is attached to a loop device and return the device ("/dev/loopN").

    An image that already backs a loop device is never attached a second time.
    """
    key = await anyio.to_thread.run_sync(_image_key, image)
    existing = await _existing_device(Path(key), read_only=read_only)
    if existing is not None:
        return existing
    mode = ["--read-only"] if read_only else []
    argv = ["losetup", "--find", "--show", *mode, "--direct-io=off", key]
    try:
        done = await run(argv)
    except CommandFailed as exc:
        if any(text in exc.stderr for text in _NO_FREE_DEVICE):
            raise LoopDevicesExhausted(exc.argv, exc.returncode, exc.stderr) from exc
        raise
    device = done.stdout.strip()
    if not await _backing_settles(_sysfs_dir(device), key):
        _log.warning("loop_sysfs_not_settled", device=device, image=key)
    return device


async def detach(device: str) -> None:
    """Ensure `device` is detached; a device that is not attached (any more) is fine.

    losetup succeeds on a device that is still open (mounted) and the kernel only marks it
    to detach at its last close. That is reported as `LoopDeviceBusy`, so that the caller
    does not go on to delete an image that is still in use. Unmount first.
    """
    sysfs_dir = _sysfs_dir(device)
    if await anyio.to_thread.run_sync(_backing_file_of, sysfs_dir) is None:
        return
    done = await run(["losetup", "--detach", device], check=False)
    # Someone may have detached it between the look and the act.
    if done.returncode != 0 and not any(text in done.stderr for text in _NOT_ATTACHED):
        raise CommandFailed(done.argv, done.returncode, done.stderr)
    if not await _backing_settles(sysfs_dir, None):
        raise LoopDeviceBusy(f"{device} is still in use; it detaches when last closed")


async def refresh_size(device: str) -> None:
    """Make the loop device pick up a grown backing file (always on the device, not the file)."""
    await run(["losetup", "--set-capacity", device])


def device_size_bytes(device: str) -> int:
    # sysfs counts 512-byte sectors whatever the device's logical block size.
    return int((_sysfs_dir(device) / "size").read_text()) * SECTOR_SIZE


async def device_size(device: str) -> int:
    return await anyio.to_thread.run_sync(device_size_bytes, device)
