"""The `raw` ceiling: a lifecycle's host work done directly with the tools, no driver.

Mount volumes: sparse image, losetup, mkfs, mount on a staging directory, bind mount on a
target, (write), umount both, losetup --detach, remove. Block volumes skip mkfs and the
staging mount and bind the loop device node onto a target file. The directories and files
a driver or CO would make on the way are made here too.

The tools are run as processes, as a script or an operator would: this is the sequence
the issue names as the ceiling. (The driver itself mounts and attaches with system calls,
host/syscalls.py, and runs only mkfs as a process.)
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from aiocsi.bench.config import Access, VolumeSpec
from aiocsi.bench.runner import Lifecycles, measure
from aiocsi.bench.workspace import WRITE_FILE, write_and_sync
from aiocsi.client.codes import local_code
from aiocsi.errors import CommandFailed
from aiocsi.host import files, fs, mount, process
from aiocsi.host.loop import LoopIndex

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from aiocsi.bench.stats import RunRecorder, Samples
    from aiocsi.bench.workspace import Workspace
    from aiocsi.threads import WorkerPool

CREATE_IMAGE, ATTACH, MKFS, MOUNT, BIND = "CreateImage", "Attach", "Mkfs", "Mount", "BindMount"
WRITE, UNBIND, UNMOUNT, DETACH, REMOVE = "Write", "UnmountBind", "Unmount", "Detach", "RemoveImage"
# Stacked mounts are possible in principle; more than this on one path is not ours.
_MAX_STACKED = 8
_BUSY_RETRIES, _BUSY_PAUSE_S = 5, 0.02


def host_code(exc: BaseException) -> str:
    if isinstance(exc, CommandFailed):
        return f"{exc.argv[0]} failed"
    return local_code(exc)


async def _timed(samples: Samples, call: Callable[[], Awaitable[None]]) -> None:
    await measure(samples, call, host_code)


@dataclass
class RawSlot:
    image: Path
    staging: Path
    target: Path
    device: str | None = None


async def _attach(workers: WorkerPool, image: Path) -> str:
    done = await process.run(
        workers, ["losetup", "--find", "--show", "--direct-io=off", str(image)]
    )
    return done.stdout.strip()


async def _mount(
    workers: WorkerPool, source: str, target: Path, *options: str, fs_type: str | None = None
) -> None:
    typed = ["-t", fs_type] if fs_type else []
    flags = ["-o", ",".join(options)] if options else []
    await process.run(workers, ["mount", *typed, *flags, source, str(target)])


async def _umount(workers: WorkerPool, target: Path) -> None:
    """umount(8), retried a few times while the kernel still calls the mount busy.

    A mount can be busy for a moment right after the last use of it ended (a child of a
    concurrent slot, or udev probing the new device, can still hold a reference); the
    driver's own unmount does not retry, but a ceiling that fails on that moment would
    make the comparison depend on luck.
    """
    for attempt in range(_BUSY_RETRIES):
        try:
            await process.run(workers, ["umount", str(target)])
        except CommandFailed as exc:
            if "busy" not in exc.stderr or attempt == _BUSY_RETRIES - 1:
                raise
            await anyio.sleep(_BUSY_PAUSE_S * (attempt + 1))
        else:
            return


async def _detach(workers: WorkerPool, device: str) -> None:
    await process.run(workers, ["losetup", "--detach", device])


async def _unmount_all(workers: WorkerPool, path: Path) -> None:
    for _ in range(_MAX_STACKED):
        if not await mount.is_mount_point(workers, path):
            return
        await _umount(workers, path)
    raise RuntimeError(f"{path} still has mounts after {_MAX_STACKED} unmounts")


async def _remove_path(path: Path) -> None:
    """Remove an empty directory or a plain file; gone is fine."""
    target = anyio.Path(path)
    with contextlib.suppress(FileNotFoundError):
        if await target.is_dir():
            await target.rmdir()
        else:
            await target.unlink()


class RawLifecycles(Lifecycles[RawSlot]):
    kind = "raw"

    def __init__(self, spec: VolumeSpec, workspace: Workspace) -> None:
        super().__init__()
        self._spec = spec
        self._workspace = workspace
        self._block = spec.access is Access.BLOCK

    @property
    def steps(self) -> tuple[str, ...]:
        setup = (CREATE_IMAGE, ATTACH) + ((BIND,) if self._block else (MKFS, MOUNT, BIND))
        middle = (WRITE,) if self._spec.write_bytes else ()
        teardown = (UNBIND,) + (() if self._block else (UNMOUNT,)) + (DETACH, REMOVE)
        return setup + middle + teardown

    def code_of(self, exc: BaseException) -> str:
        return host_code(exc)

    def describe(self, slot: RawSlot) -> str:
        return f"raw image {slot.image} (device {slot.device or '?'})"

    def _new(self, seq: int) -> RawSlot:
        ws = self._workspace
        return RawSlot(ws.image(seq), ws.staging(seq), ws.target(seq))

    async def _steps(self, slot: RawSlot, rec: RunRecorder) -> None:
        w = self._workspace.workers
        await _timed(
            rec.op(CREATE_IMAGE), lambda: files.create_sparse(w, slot.image, self._spec.size)
        )
        slot.device = await measure(rec.op(ATTACH), lambda: _attach(w, slot.image), host_code)
        device = slot.device
        if self._block:
            await anyio.Path(slot.target).touch(mode=0o600)
            await _timed(rec.op(BIND), lambda: _mount(w, device, slot.target, "bind"))
        else:
            fs_type = self._spec.fs_type
            await anyio.Path(slot.staging).mkdir(exist_ok=True)
            await _timed(rec.op(MKFS), lambda: fs.make_fs(w, device, fs_type))
            await _timed(rec.op(MOUNT), lambda: _mount(w, device, slot.staging, fs_type=fs_type))
            await anyio.Path(slot.target).mkdir(mode=0o750, exist_ok=True)
            await _timed(rec.op(BIND), lambda: _mount(w, str(slot.staging), slot.target, "bind"))
        if self._spec.write_bytes:
            await _timed(rec.op(WRITE), lambda: self._write(slot))
        await _timed(rec.op(UNBIND), lambda: _umount(w, slot.target))
        await _remove_path(slot.target)
        if not self._block:
            await _timed(rec.op(UNMOUNT), lambda: _umount(w, slot.staging))
            await _remove_path(slot.staging)
        await _timed(rec.op(DETACH), lambda: _detach(w, device))
        await _timed(rec.op(REMOVE), lambda: files.remove_file(w, slot.image))

    async def _write(self, slot: RawSlot) -> None:
        path = slot.target if self._block else slot.target / WRITE_FILE
        size = self._spec.write_bytes
        await anyio.to_thread.run_sync(lambda: write_and_sync(path, size, create=not self._block))

    async def _release(self, slot: RawSlot, rec: RunRecorder) -> None:
        w = self._workspace.workers
        await _timed(rec.cleanup_op(UNBIND), lambda: _unmount_all(w, slot.target))
        await _remove_path(slot.target)
        await _timed(rec.cleanup_op(UNMOUNT), lambda: _unmount_all(w, slot.staging))
        await _remove_path(slot.staging)
        for device in LoopIndex(w).devices_for(slot.image):
            await _timed(rec.cleanup_op(DETACH), functools.partial(_detach, w, device))
        await _timed(rec.cleanup_op(REMOVE), lambda: files.remove_file(w, slot.image))
