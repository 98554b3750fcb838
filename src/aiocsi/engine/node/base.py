"""What every node call shares: the volume's device, its mounts, its records, and
releasing what a call made."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

from aiocsi.engine.health import HealthChecker
from aiocsi.engine.host_errors import host_step, pool_write_step
from aiocsi.engine.node.paths import (
    is_ours_sync,
    remove_empty_target,
    remove_path,
    resolve_under,
    unmount_ours_sync,
)
from aiocsi.engine.resources import EngineResources
from aiocsi.engine.volumes import VolumeService
from aiocsi.errors import FailedPrecondition, HostFailure, InvalidArgument
from aiocsi.host import fs, loop, mount, sysfs
from aiocsi.logging import get_logger
from aiocsi.models import (
    AccessMode,
    AccessType,
    Capability,
    Publication,
    PublicationKind,
    Volume,
    VolumeCondition,
)

log = get_logger("aiocsi.engine")


def worse(condition: VolumeCondition, message: str) -> VolumeCondition:
    """Keep the first problem found: it is the closest to the cause."""
    return condition if condition.abnormal else VolumeCondition(abnormal=True, message=message)


def asks_read_only(capability: Capability | None) -> bool:
    if capability is None:
        return False
    return capability.access_mode is AccessMode.SINGLE_NODE_READER_ONLY or (
        "ro" in capability.mount_flags
    )


def is_single_writer(capability: Capability | None) -> bool:
    return capability is not None and (
        capability.access_mode is AccessMode.SINGLE_NODE_SINGLE_WRITER
    )


def access_type(pub: Publication) -> AccessType:
    return pub.capability.access_type if pub.capability else AccessType.MOUNT


class NodeCommon:
    """Lookups and releases shared by the node calls."""

    def __init__(self, ctx: EngineResources, volumes: VolumeService, health: HealthChecker) -> None:
        self._ctx = ctx
        self._health = health
        self._store = ctx.store
        self._pool = ctx.pool
        self._workers = ctx.workers
        self._loops = ctx.loops
        self._volumes = volumes
        self._allowed_flags = ctx.config.allowed_mount_flags

    async def _require_fs_tools(self, fs_type: str) -> None:
        """Refuse a filesystem this node lacks a tool for, before anything is made."""
        if missing := await self._health.missing_fs_tools(fs_type):
            raise FailedPrecondition(
                f"node {self._ctx.config.node_id} cannot serve {fs_type} volumes: host "
                f"tool {', '.join(repr(t) for t in missing)} not found in PATH"
            )

    def _device(self, volume: Volume) -> str | None:
        """The loop device backed by the volume's image, even if the image was deleted.

        Finding a deleted image's device lets unpublish and unstage release what is left
        instead of refusing to touch an "unknown" mount.
        """
        devices = self._loops.devices_for(self._pool.volume_image(volume.id))
        return devices[0] if devices else None

    @staticmethod
    def _top_mount(point: Path) -> mount.MountEntry | None:
        """The visible mount at `point`, a canonical path (see `_real_path`)."""
        entries = mount.mounts_at_point(point)
        return entries[-1] if entries else None

    async def _is_ours(self, entry: mount.MountEntry, path: Path, device: str | None) -> bool:
        """Whether `entry`, the visible mount at `path`, is a mount of this volume's device."""
        if device is not None and entry.source == device:
            return True  # the common case, told without a stat
        return await self._workers.run_sync(is_ours_sync, entry, path, device)

    async def _our_top_mount(
        self, point: Path, device: str | None
    ) -> tuple[mount.MountEntry | None, bool]:
        top = self._top_mount(point)
        return top, top is not None and await self._is_ours(top, point, device)

    def _find(self, volume_id: str, kind: PublicationKind, path: str) -> Publication | None:
        for pub in self._store.publications(volume_id, kind):
            if pub.path == path:
                return pub
        return None

    async def _real_path(self, path: Path, field: str) -> Path:
        """`path` with every symlink resolved, as mountinfo shows mount points; a path that
        leaves the allowed roots that way is refused.

        Resolved once per call, in a worker thread: the mount table is then searched for the
        canonical path on the event loop, without walking the filesystem again.
        """
        [real] = await self._real_paths((path, field))
        return real

    async def _real_paths(self, *paths: tuple[Path, str]) -> list[Path]:
        """`_real_path` of each (path, field), in one worker-thread call."""
        roots = self._ctx.config.allowed_path_roots
        resolved = await self._workers.run_sync(
            lambda: [resolve_under(path, roots) for path, _ in paths]
        )
        for real, (path, field) in zip(resolved, paths, strict=True):
            if real is None:
                raise InvalidArgument(f"{field} {path} resolves outside the allowed path roots")
        return [real for real in resolved if real is not None]

    def _refuse_path_of_another(self, volume: Volume, path: Path) -> None:
        """One staging or target path serves one volume, and no volume's path lies inside
        another's: otherwise one's unstage or unpublish would meet the other's mount (a
        mount beneath a mount point makes it busy; a mount over one hides it)."""
        for pub in self._store.publications_near(str(path)):
            if pub.kind is PublicationKind.CONTROLLER or pub.volume_id == volume.id:
                continue
            other = Path(pub.path)
            if other == path:
                raise FailedPrecondition(f"{path} is in use by volume {pub.volume_id}")
            if other in path.parents or path in other.parents:
                raise FailedPrecondition(
                    f"{path} and {other} (used by volume {pub.volume_id}) lie one inside the "
                    "other; give each volume a path of its own"
                )

    async def _detach_quietly(self, device: str) -> None:
        with contextlib.suppress(HostFailure, FailedPrecondition):
            await self._loops.detach(device)

    async def _unmount_quietly(self, path: Path, device: str) -> None:
        with contextlib.suppress(HostFailure, FailedPrecondition):
            await self._unmount_ours(path, device)

    async def _undo_mount(self, point: Path, device: str, created: bool) -> None:
        """Roll back a mount made by a call that fails later, and the target it created."""
        await self._unmount_quietly(point, device)
        if created:
            with contextlib.suppress(OSError):
                await remove_path(self._workers, point)

    async def _release_device(self, volume: Volume, device: str, *, views: bool = True) -> None:
        """Detach `device` (and, with `views`, its unused read-only views)."""
        # Detaching a mounted device only marks it for detach at its last close: look
        # first, so that a mount nobody recorded is reported instead of silently kept alive.
        elsewhere, unused_views = await self._device_use(device, views=views)
        if elsewhere:
            raise FailedPrecondition(
                f"volume {volume.id} ({device}) is still mounted at {', '.join(elsewhere)}"
            )
        with host_step(f"detaching volume {volume.id}"):
            # A view left by a crash holds the device open: it goes first.
            for view in unused_views:
                await self._loops.detach(view)
            await self._loops.detach(device)

    async def _device_use(self, device: str, *, views: bool = True) -> tuple[list[str], list[str]]:
        """Where `device` or a read-only view of it is mounted or bound, and the views that
        nothing shows any more. Without `views`, its views are not looked for: that reads
        the backing file of every attached loop device."""
        views_found = sysfs.views_on(device, sysfs.all_loop_backing_files()) if views else []
        ours = {device, *views_found}
        mounts = mount.mounts_where(lambda line: sysfs.mountinfo_line_of_use(line, ours))
        # Binds of loop device nodes (block publications) are told by a stat of their mount
        # point, in a worker thread; a table without any needs none.
        binds = sysfs.loop_node_mounts(mounts)
        bound = await self._workers.run_sync(sysfs.bound_loop_devices, binds) if binds else {}
        uses = [(m.mount_point, m.source) for m in mounts] + list(bound.items())
        points = [point for point, used in uses if used in ours]
        busy = {used for _, used in uses}
        return points, [view for view in views_found if view not in busy]

    async def _detach_unused_views(self, device: str) -> None:
        _, unused = await self._device_use(device)
        for view in unused:
            with host_step(f"detaching read-only view {view} of {device}"):
                try:
                    await self._loops.detach(view)
                except loop.LoopDeviceBusy:
                    # Still held open by a process; the kernel detaches it at its last close.
                    log.warning("loop_view_busy", device=device, view=view)

    async def _unmount_ours(
        self, point: Path, device: str | None, *, remove_target: bool = False
    ) -> None:
        """Unmount every mount of `device` stacked at `point` (canonical); refuse to touch
        anything else. With `remove_target`, remove the emptied target too.

        Looks on the loop first; the unmounts, the checks between them and the removal are
        then one worker-thread call.
        """
        if self._top_mount(point) is None:
            if remove_target:
                await remove_empty_target(self._workers, point)
            return
        await self._workers.run_sync(
            functools.partial(unmount_ours_sync, point, device, remove_target=remove_target)
        )

    async def _grow_filesystem_at(
        self, volume: Volume, device: str, fs_type: str, mount_point: Path | None
    ) -> None:
        """Grow the filesystem to fill the device: mounted at `mount_point`, or unmounted."""
        await self._require_fs_tools(fs_type)
        async with pool_write_step(
            f"growing the filesystem of volume {volume.id}", self._ctx.space, device
        ):
            if mount_point is not None:
                await fs.grow_fs(self._workers, device, mount_point, fs_type)
            else:
                # Whole-device work like mkfs (e2fsck reads every group): the same limit.
                async with self._ctx.mkfs_slots:
                    await fs.grow_offline(self._workers, device, fs_type)
        log.info(
            "volume_filesystem_grown",
            volume_id=volume.id,
            fs_type=fs_type,
            mounted=mount_point is not None,
        )
