"""The space watch: allocated bytes per image, the pool_space_low/ok events, and whether
writes into a staged volume failed or may fail for space (engine/budget.py: the formula).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from aiocsi.engine.budget import PoolBudget, PoolSpace, statvfs
from aiocsi.engine.host_errors import is_io_error, is_no_space
from aiocsi.engine.parameters import preallocate
from aiocsi.host import files, fserrors, sysfs
from aiocsi.logging import get_logger
from aiocsi.models import PublicationKind, Volume, VolumeCondition

if TYPE_CHECKING:
    from aiocsi.engine.pool import Pool
    from aiocsi.host.loop import LoopIndex
    from aiocsi.state.store import Store
    from aiocsi.threads import WorkerPool

log = get_logger("aiocsi.engine")
DEFAULT_INTERVAL = 10.0
# Below this many free bytes the pool is full for a command that failed with EIO.
FULL = 1024 * 1024


class SpaceWatch:
    """Allocated bytes per image, the pool's space, and the pool_space_low/ok events."""

    def __init__(
        self,
        pool: Pool,
        store: Store,
        workers: WorkerPool,
        loops: LoopIndex,
        overcommit: float,
        *,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.pool = pool
        self.overcommit = overcommit
        self.interval = interval
        self.kernel_log = fserrors.KernelLog()
        self._store = store
        self._workers = workers
        self._loops = loops
        self._images: dict[str, int] = {}
        self.allocated = 0  # sum of _images
        self._changed: dict[str, int | None] | None = None  # our changes during a scan
        self._last: PoolSpace | None = None
        self._low = False
        self._task: asyncio.Task[None] | None = None
        self._scanning = asyncio.Lock()

    # -- per-image figures ------------------------------------------------------------------

    def _set(self, key: str, value: int | None) -> None:
        old = self._images.pop(key, 0)
        if value is not None:
            self._images[key] = value
        self.allocated += (value or 0) - old
        if self._changed is not None:
            self._changed[key] = value

    def forget(self, image: Path) -> None:
        """An image we removed holds nothing any more (applied before the next scan)."""
        self._set(str(image), None)

    async def measure(self, image: Path) -> None:
        """Read what an image we just filled holds."""
        try:
            held: int | None = await self._workers.run_sync(files.allocated_bytes, image)
        except FileNotFoundError:
            held = None
        self._set(str(image), held)

    def held(self) -> tuple[int, dict[str, int]]:
        """The allocated bytes and their part per image (a copy, for a worker thread)."""
        return self.allocated, dict(self._images)

    def budget(self) -> PoolBudget:
        """A budget to be measured where it is checked (the store thread)."""
        return PoolBudget(self.pool.root, self.overcommit, self.allocated)

    async def measured_budget(self) -> PoolBudget:
        """The budget, measured now."""
        budget = self.budget()
        await self._workers.run_sync(budget)
        return budget

    # -- the periodic check -----------------------------------------------------------------

    def statistics(self) -> PoolSpace | None:
        """The pool's space as last measured (every `interval` seconds); None before."""
        return self._last

    @property
    def low(self) -> bool:
        """Whether the pool was below the warning level at the last check."""
        return self._low

    async def refresh(self) -> PoolSpace:
        """Rescan every image, measure the pool, log a crossing of the warning level."""
        async with self._scanning:
            self._changed = {}
            try:
                found, (total, used, free), attached = await self._workers.run_sync(self._scan_all)
                for key, value in self._changed.items():
                    found.pop(key, None)
                    if value is not None:
                        found[key] = value
            finally:
                self._changed = None
            self._images = found
            self.allocated = sum(found.values())
        await self._keep_preallocated(attached)
        provisioned = await self._store.provisioned_bytes()
        space = PoolSpace(total, free, provisioned, self.allocated, max(used - self.allocated, 0))
        self._last = space
        self._check_level(space, attached)
        return space

    async def _keep_preallocated(self, attached: list[str]) -> None:
        """Allocate again what a discard punched out of an attached preallocated volume.

        A loop device turns a discard (fstrim: systemd's weekly fstrim.timer trims every
        mounted filesystem; a `discard` mount flag) into a hole in its image, which gives
        the preallocated blocks back. (Refusing discards on the device is no cure: the
        kernel keeps that limit on the loop device after it is detached, for its next
        user.) A hole reads as zeros, as the unwritten blocks allocated in its place do: no
        data changes.
        """
        for image in attached:
            volume = self._store.get_volume(Path(image).stem)
            if volume is None or not preallocate(volume.parameters, volume.mutable_parameters):
                continue
            held = self._images.get(image, 0)
            if held >= volume.capacity_bytes:
                continue
            try:
                await files.allocate(self._workers, Path(image), volume.capacity_bytes)
            except OSError as exc:  # a full pool: the volume condition says so meanwhile
                log.warning("preallocation_lost", volume_id=volume.id, error=exc.strerror)
                continue
            await self.measure(Path(image))
            if (regained := self._images.get(image, 0) - held) > 0:
                log.info("preallocation_restored", volume_id=volume.id, bytes=regained)

    def _scan_all(self) -> tuple[dict[str, int], tuple[int, int, int], list[str]]:
        found = files.allocated_per_image(self.pool.real_image_dirs)
        self.kernel_log.drain()
        attached = [
            sysfs.attached_path(backing)
            for backing in sysfs.all_loop_backing_files().values()
            if self.pool.owns_image(sysfs.attached_path(backing))
        ]
        return found, statvfs(self.pool.root), attached

    def _check_level(self, space: PoolSpace, attached: list[str]) -> None:
        """Warning level: free < the largest part an attached sparse volume may allocate."""
        worst, worst_id = 0, ""
        for image in attached:
            volume = self._store.get_volume(Path(image).stem)
            if volume is None:
                continue
            left = volume.capacity_bytes - self._images.get(image, 0)
            if left > worst:
                worst, worst_id = left, volume.id
        low = worst > space.free
        if low and not self._low:
            log.warning(
                "pool_space_low",
                pool=str(self.pool.root),
                free_bytes=space.free,
                unallocated_bytes=worst,
                volume_id=worst_id,
            )
        elif self._low and not low:
            log.info("pool_space_ok", pool=str(self.pool.root), free_bytes=space.free)
        self._low = low

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - a background check must outlive a failure
                log.warning("pool_space_check_failed", error=str(exc))

    async def start(self) -> None:
        await self.refresh()
        if self.kernel_log.unavailable is not None:
            # Lost writes are then known only from ext4's and btrfs's counters.
            log.warning("kernel_log_unavailable", reason=self.kernel_log.unavailable)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._workers.run_sync(self.kernel_log.close)

    async def attached(self, device: str) -> None:
        """`device` was just attached: what the kernel logged for it is another image's."""
        await self._workers.run_sync(self.kernel_log.forget, device)

    async def ran_out(self, exc: BaseException, device: str) -> bool:
        """Whether a failed write through `device` failed for space in the pool: its own
        error says so, or the block layer failed a request of the device for space (a
        command writing to a loop device sees that as EIO), or it failed with EIO while the
        pool has less than `FULL` bytes free (the kernel's message is rate-limited and may
        be missing)."""
        if is_no_space(exc):
            return True
        if not device or not is_io_error(exc):
            return False
        return await self._workers.run_sync(self._ran_out_sync, device)

    def _ran_out_sync(self, device: str) -> bool:
        return self.kernel_log.ran_out_of_space(device) or statvfs(self.pool.root)[2] < FULL

    # -- volume condition -------------------------------------------------------------------

    def writers(self, volume: Volume, image: Path) -> list[str] | None:
        """The loop devices of a staged volume, to pass to `condition_sync`; None when it is
        not staged (nothing on this node can write to it)."""
        if not self._store.publications(volume.id, PublicationKind.STAGE):
            return None
        return self._loops.devices_for(image)

    def condition_sync(
        self, volume: Volume, image: Path, devices: list[str] | None
    ) -> VolumeCondition:
        """Whether writes into a staged volume have failed, or may fail for space (blocking:
        sysfs reads, a kmsg drain, a statvfs)."""
        if devices is None:
            return VolumeCondition.healthy()
        root = self.pool.root
        _, _, free = statvfs(root)
        try:
            unallocated = volume.capacity_bytes - files.allocated_bytes(image)
        except FileNotFoundError:
            unallocated = 0
        problems = [p for d in devices for p in fserrors.device_problems(d, self.kernel_log)]
        short = unallocated > free
        space = (
            f"the pool filesystem {root} has {free} bytes free, less than the {unallocated} "
            "bytes this sparse volume may still allocate"
        )
        if problems:
            cause = f"; {space}" if short else ""
            return VolumeCondition(
                abnormal=True,
                message=(
                    f"writes into volume {volume.id} failed: {'; '.join(problems)}{cause}. "
                    f"Data written may be lost: free space on {root}, then unstage the volume "
                    "and check its filesystem"
                ),
            )
        if short:
            return VolumeCondition(
                abnormal=True,
                message=(
                    f"{space}: writes into it can fail and be lost. Free space on {root} "
                    "(or move data off the volume)"
                ),
            )
        return VolumeCondition.healthy()
