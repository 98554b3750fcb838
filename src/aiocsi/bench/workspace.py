"""The run's own directory: staging and target paths, raw images, the spawned driver's pool.

Everything a run creates lies under one fresh directory, so "ours" is a path prefix: the
final sweep unmounts and detaches only what lies under it, and the directory is removed
only when nothing is mounted or attached under it any more.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from aiocsi.config import DEFAULT_MAX_OPERATIONS
from aiocsi.errors import HostFailure
from aiocsi.host import mount, sysfs
from aiocsi.host.loop import LoopIndex
from aiocsi.threads import WorkerPool

WORK_PREFIX = "aiocsi-bench-"
WRITE_FILE = "bench.dat"
_WRITE_CHUNK = 1024 * 1024
# Not zeros, so that nothing on the way can treat the writes as holes or discards.
_PATTERN = bytes(range(256)) * (_WRITE_CHUNK // 256)


def _under(path: str, root: Path) -> bool:
    return path == str(root) or path.startswith(f"{root}/")


@dataclass(frozen=True)
class Workspace:
    root: Path
    # The bench's own worker pool, as large as a driver's at the default --max-operations.
    workers: WorkerPool = field(
        default_factory=lambda: WorkerPool.for_operations(DEFAULT_MAX_OPERATIONS)
    )

    @classmethod
    async def create(cls, parent: Path | None) -> Workspace:
        def make() -> Path:
            root = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=parent)).resolve()
            for sub in ("s", "t", "img", "drv"):
                (root / sub).mkdir()
            return root

        return cls(await anyio.to_thread.run_sync(make))

    @property
    def driver_dir(self) -> Path:
        return self.root / "drv"

    def staging(self, seq: int) -> Path:
        return self.root / "s" / str(seq)

    def target(self, seq: int) -> Path:
        return self.root / "t" / str(seq)

    def image(self, seq: int) -> Path:
        return self.root / "img" / f"{seq}.img"

    async def mounts(self) -> list[mount.MountEntry]:
        """Mounts under the root, in mount order (newest last)."""
        return [m for m in mount.read_mounts() if _under(m.mount_point, self.root)]

    async def loop_devices(self) -> dict[str, str]:
        return {
            dev: backing
            for dev, backing in sysfs.all_loop_backing_files().items()
            if _under(backing, self.root)
        }

    async def leftovers(self) -> list[str]:
        mounts = [f"mount {m.mount_point} ({m.source})" for m in await self.mounts()]
        loops = [f"loop {dev} -> {backing}" for dev, backing in (await self.loop_devices()).items()]
        return mounts + loops

    async def sweep(self) -> None:
        """Unmount (newest first) and detach everything under the root. Only for resources
        nobody else manages any more: the raw scenario's, or a spawned driver's after it exited.
        """
        # Best effort: whatever stays is reported by `leftovers()`.
        for entry in reversed(await self.mounts()):
            with contextlib.suppress(HostFailure, OSError):
                await mount.unmount(self.workers, Path(entry.mount_point))
        loops = LoopIndex(self.workers)
        for device in await self.loop_devices():
            with contextlib.suppress(HostFailure, OSError):
                await loops.detach(device)

    async def remove(self) -> list[str]:
        """Remove the directory unless something is still mounted or attached under it."""
        left = await self.leftovers()
        if not left:
            await anyio.to_thread.run_sync(shutil.rmtree, self.root)
        return left


def write_and_sync(path: Path, size: int, *, create: bool) -> None:
    """Write `size` bytes at the start of `path` and fsync them (blocking: run in a thread)."""
    flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_CREAT | os.O_TRUNC if create else 0)
    fd = os.open(path, flags, 0o600)
    try:
        done = 0
        while done < size:
            done += os.write(fd, memoryview(_PATTERN)[: min(_WRITE_CHUNK, size - done)])
        os.fsync(fd)
    finally:
        os.close(fd)
