"""Node-side volume work: loop devices, formats, mounts (DESIGN.md §3, §4).

Every step is an "ensure": it looks before it acts, so a retry after a timeout or a crash
continues where the last try stopped. A failed call undoes only what it did itself, and a
mount or loop device that is not this volume's is never touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from aiocsi import threads
from aiocsi.config import ConfigError, parse_size
from aiocsi.engine.context import EngineContext
from aiocsi.engine.requests import CapacityRange, CreateVolume, PublishVolume, StageVolume
from aiocsi.engine.volumes import DEFAULT_FS, VolumeService
from aiocsi.errors import (
    AlreadyExists,
    FailedPrecondition,
    HostFailure,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from aiocsi.host import files, fs, loop, mount, syscalls
from aiocsi.host.fs import FsStats
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
EPHEMERAL_KEY = "csi.storage.k8s.io/ephemeral"
EPHEMERAL_PREFIX = "ephemeral:"
DEFAULT_EPHEMERAL_SIZE = "1Gi"
_NO_FS_STATS = FsStats(0, 0, 0, 0, 0, 0)
# Stacked mounts are possible; more than this many of ours at one path is not a real case.
_MAX_STACKED_MOUNTS = 16


@dataclass(frozen=True)
class _Points:
    """The canonical paths of a publish call: mountinfo shows mount points resolved."""

    staging: Path
    target: Path


@dataclass(frozen=True)
class VolumeStats:
    access_type: AccessType
    condition: VolumeCondition
    fs: FsStats | None = None
    size_bytes: int = 0


def is_ephemeral(context: dict[str, str]) -> bool:
    return context.get(EPHEMERAL_KEY, "").lower() == "true"


def _host_failure(what: str, exc: HostFailure) -> Internal | ResourceExhausted | FailedPrecondition:
    if isinstance(exc, syscalls.LoopDevicesExhausted):
        return ResourceExhausted(f"{what}: no free loop device on this node")
    if isinstance(exc, fs.OnlineGrowRefused):
        # The spec's "volume in use" case: kubelet then stops retrying on this node and
        # expands again after the next stage, which grows the filesystem unmounted.
        return FailedPrecondition(
            f"{what}: the kernel refused to grow the mounted ext4 filesystem because this "
            "driver lacks CAP_SYS_RESOURCE. The device has grown; the filesystem will be "
            "grown to fill it when the volume is next staged (unpublish and unstage it)"
        )
    return Internal(f"{what}: {exc}")


@contextlib.asynccontextmanager
async def _host_step(what: str) -> AsyncIterator[None]:
    try:
        yield
    except HostFailure as exc:
        raise _host_failure(what, exc) from exc


def _worse(condition: VolumeCondition, message: str) -> VolumeCondition:
    """Keep the first problem found: it is the closest to the cause."""
    return condition if condition.abnormal else VolumeCondition(abnormal=True, message=message)


def _asks_read_only(capability: Capability | None) -> bool:
    if capability is None:
        return False
    return capability.access_mode is AccessMode.SINGLE_NODE_READER_ONLY or (
        "ro" in capability.mount_flags
    )


def _is_single_writer(capability: Capability | None) -> bool:
    return capability is not None and (
        capability.access_mode is AccessMode.SINGLE_NODE_SINGLE_WRITER
    )


def _access_type(pub: Publication) -> AccessType:
    return pub.capability.access_type if pub.capability else AccessType.MOUNT


class NodeService:
    def __init__(self, ctx: EngineContext, volumes: VolumeService) -> None:
        self._ctx = ctx
        self._store = ctx.store
        self._pool = ctx.pool
        self._volumes = volumes

    # -- helpers --------------------------------------------------------------------------

    async def _device(self, volume: Volume) -> str | None:
        """The loop device backed by the volume's image, even if the image was deleted.

        Finding a deleted image's device lets unpublish and unstage release what is left
        instead of refusing to touch an "unknown" mount.
        """
        devices = await loop.find_loop_devices(self._pool.volume_image(volume.id))
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
        return await threads.run_sync(_is_ours_sync, entry, path, device)

    async def _our_top_mount(
        self, point: Path, device: str | None
    ) -> tuple[mount.MountEntry | None, bool]:
        top = self._top_mount(point)
        return top, top is not None and await self._is_ours(top, point, device)

    async def _find(self, volume_id: str, kind: PublicationKind, path: str) -> Publication | None:
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
        resolved = await threads.run_sync(
            lambda: [_resolve_under(path, roots) for path, _ in paths]
        )
        for real, (path, field) in zip(resolved, paths, strict=True):
            if real is None:
                raise InvalidArgument(f"{field} {path} resolves outside the allowed path roots")
        return [real for real in resolved if real is not None]

    async def _refuse_path_of_another(self, volume: Volume, path: Path) -> None:
        """One staging or target path serves one volume: otherwise either one's unstage or
        unpublish would meet the other's mount."""
        for pub in self._store.publications():
            if pub.path == str(path) and pub.volume_id != volume.id:
                raise FailedPrecondition(f"{path} is in use by volume {pub.volume_id}")

    async def _volume_or_ephemeral(self, volume_id: str) -> Volume:
        return await self._ephemeral_volume(volume_id) or await self._volumes.get(volume_id)

    # -- stage ----------------------------------------------------------------------------

    async def stage(self, request: StageVolume) -> None:
        volume = await self._volumes.get(request.volume_id)
        staging = Path(request.staging_path)
        real = await self._real_path(staging, "staging_target_path")
        await self._ctx.operations.run(
            f"volume:{volume.id}",
            ("stage", request),
            "NodeStageVolume",
            lambda: self._stage(volume, staging, real, request.capability),
        )

    async def _stage(
        self, volume: Volume, staging: Path, real: Path, capability: Capability
    ) -> None:
        """Stage at `staging` (recorded as given); `real` is its canonical path."""
        await self._refuse_path_of_another(volume, staging)
        for pub in self._store.publications(volume.id, PublicationKind.STAGE):
            if pub.path != str(staging):
                raise FailedPrecondition(
                    f"volume {volume.id} is already staged at {pub.path}; unstage it first"
                )
            if pub.capability != capability:
                raise AlreadyExists(
                    f"volume {volume.id} is staged at {staging} with a different capability"
                )
        async with AsyncExitStack() as undo:
            attached = await self._ensure_attached(volume, capability, undo)
            device = attached.device
            if capability.access_type is AccessType.MOUNT:
                await self._ensure_mounted(volume, attached, real, capability, undo)
            await self._store.add_publication(
                Publication(
                    volume.id,
                    PublicationKind.STAGE,
                    str(staging),
                    self._ctx.config.node_id,
                    capability=capability,
                )
            )
            undo.pop_all()
        log.info("volume_staged", volume_id=volume.id, device=device, path=str(staging))

    async def _ensure_attached(
        self, volume: Volume, capability: Capability, undo: AsyncExitStack
    ) -> loop.Attachment:
        # A read-only block volume gets a read-only device: a read-only bind of a device
        # node does not stop writes through it. Mount volumes get a read-only mount instead
        # (a blank one must still be formatted first).
        read_only = (
            capability.access_type is AccessType.BLOCK
            and capability.access_mode is AccessMode.SINGLE_NODE_READER_ONLY
        )
        async with _host_step(f"attaching volume {volume.id}"):
            # attach() returns the device already backed by the image (never a second one)
            # and refuses one attached in the other mode.
            attached = await loop.attach(self._pool.volume_image(volume.id), read_only=read_only)
        if attached.new:
            undo.push_async_callback(self._detach_quietly, attached.device)
        return attached

    async def _detach_quietly(self, device: str) -> None:
        with contextlib.suppress(HostFailure, FailedPrecondition):
            await loop.detach(device)

    async def _ensure_mounted(
        self,
        volume: Volume,
        attached: loop.Attachment,
        staging: Path,
        capability: Capability,
        undo: AsyncExitStack,
    ) -> None:
        """Mount the volume's filesystem at `staging` (canonical), formatting a blank one."""
        device = attached.device
        top, ours = await self._our_top_mount(staging, device)
        if top is not None:
            if not ours:
                raise FailedPrecondition(
                    f"{staging} already has a mount of {top.source} that is not volume {volume.id}"
                )
            if capability.fs_type and top.fs_type != capability.fs_type:
                raise FailedPrecondition(
                    f"volume {volume.id} holds a {top.fs_type} filesystem, not "
                    f"{capability.fs_type}; it is never reformatted"
                )
            return
        wanted = capability.fs_type or DEFAULT_FS
        async with _host_step(f"formatting volume {volume.id}"):
            # An image with no data at all, just attached, carries no signature: no probe.
            found = None if attached.blank else await fs.probe_fs_type(device)
            formatted = found is None
            if found is None:
                async with self._ctx.mkfs_slots:
                    await fs.make_fs(device, wanted)
                found = wanted
                log.info("volume_formatted", volume_id=volume.id, fs_type=wanted)
        if capability.fs_type and found != capability.fs_type:
            raise FailedPrecondition(
                f"volume {volume.id} holds a {found} filesystem, not {capability.fs_type}; "
                "it is never reformatted"
            )
        options = list(capability.mount_flags)
        if capability.access_mode is AccessMode.SINGLE_NODE_READER_ONLY:
            options.append("ro")
        # Smaller than its device when the image grew while unstaged, or when an online
        # grow was refused: staging presents the full size (mkfs fills the device itself).
        # A read-only stage changes nothing; the next read-write one grows it.
        grow = (
            not formatted
            and "ro" not in options
            and found in fs.SUPPORTED_FS_TYPES
            and await fs.can_grow(device, found)
        )
        if grow and found in fs.GROWS_OFFLINE:
            await self._grow_filesystem_at(volume, device, found, None)
        async with _host_step(f"mounting volume {volume.id} at {staging}"):
            # mount(2) either mounts or leaves nothing; a directory it made is undone with it.
            created = await mount.mount(
                device, staging, fs_type=found, options=options, make_target="dir"
            )
        undo.push_async_callback(self._undo_mount, staging, device, created)
        if grow and found not in fs.GROWS_OFFLINE:  # xfs and btrfs grow only while mounted
            await self._grow_filesystem_at(volume, device, found, staging)

    async def _unmount_quietly(self, path: Path, device: str) -> None:
        with contextlib.suppress(HostFailure, FailedPrecondition):
            await self._unmount_ours(path, device)

    async def _undo_mount(self, point: Path, device: str, created: bool) -> None:
        """Roll back a mount made by a call that fails later, and the target it created."""
        await self._unmount_quietly(point, device)
        if created:
            with contextlib.suppress(OSError):
                await _remove_path(point)

    # -- unstage --------------------------------------------------------------------------

    async def unstage(self, volume_id: str, staging_path: str) -> None:
        volume = await self._volumes.get(volume_id)
        real = await self._real_path(Path(staging_path), "staging_target_path")
        await self._ctx.operations.run(
            f"volume:{volume.id}",
            ("unstage", staging_path),
            "NodeUnstageVolume",
            lambda: self._unstage(volume, Path(staging_path), real),
        )

    async def _unstage(self, volume: Volume, staging: Path, real: Path) -> None:
        published = self._store.publications(volume.id, PublicationKind.PUBLISH)
        if published:
            paths = ", ".join(p.path for p in published)
            raise FailedPrecondition(f"volume {volume.id} is still published at {paths}")
        device = await self._device(volume)
        stage = await self._find(volume.id, PublicationKind.STAGE, str(staging))
        async with _host_step(f"unmounting volume {volume.id} from {staging}"):
            await self._unmount_ours(real, device)
        await self._store.remove_publication(volume.id, PublicationKind.STAGE, str(staging))
        # Staged somewhere else: this path was not (or no longer) its staging path, and the
        # device still serves the other one.
        still_staged = self._store.publications(volume.id, PublicationKind.STAGE)
        if device is not None and not still_staged:
            # Only block publications get read-only views; without a record, look anyway.
            views = stage is None or _access_type(stage) is AccessType.BLOCK
            await self._release_device(volume, device, views=views)
        log.info("volume_unstaged", volume_id=volume.id, path=str(staging))

    async def _release_device(self, volume: Volume, device: str, *, views: bool = True) -> None:
        """Detach `device` (and, with `views`, its unused read-only views)."""
        # Detaching a mounted device only marks it for detach at its last close: look
        # first, so that a mount nobody recorded is reported instead of silently kept alive.
        elsewhere, unused_views = await self._device_use(device, views=views)
        if elsewhere:
            raise FailedPrecondition(
                f"volume {volume.id} ({device}) is still mounted at {', '.join(elsewhere)}"
            )
        async with _host_step(f"detaching volume {volume.id}"):
            # A view left by a crash holds the device open: it goes first.
            for view in unused_views:
                await loop.detach(view)
            await loop.detach(device)

    async def _device_use(self, device: str, *, views: bool = True) -> tuple[list[str], list[str]]:
        """Where `device` or a read-only view of it is mounted or bound, and the views that
        nothing shows any more. Without `views`, its views are not looked for: that reads
        the backing file of every attached loop device."""
        views_found = loop.views_on(device, await loop.loop_backing_files()) if views else []
        ours = {device, *views_found}
        mounts = mount.mounts_where(lambda line: loop.mountinfo_line_of_use(line, ours))
        # Binds of loop device nodes (block publications) are told by a stat of their mount
        # point, in a worker thread; a table without any needs none.
        binds = loop.loop_node_mounts(mounts)
        bound = await threads.run_sync(loop.bound_loop_devices, binds) if binds else {}
        uses = [(m.mount_point, m.source) for m in mounts] + list(bound.items())
        points = [point for point, used in uses if used in ours]
        busy = {used for _, used in uses}
        return points, [view for view in views_found if view not in busy]

    async def _detach_unused_views(self, device: str) -> None:
        _, unused = await self._device_use(device)
        for view in unused:
            async with _host_step(f"detaching read-only view {view} of {device}"):
                try:
                    await loop.detach(view)
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
                await _remove_target(point)
            return
        await threads.run_sync(
            functools.partial(_unmount_ours_sync, point, device, remove_target=remove_target)
        )

    # -- publish --------------------------------------------------------------------------

    async def publish(self, request: PublishVolume) -> None:
        # Checked before anything is made: an inline volume would otherwise be created,
        # formatted and staged, only to be rolled back.
        target_field = (Path(request.target_path), "target_path")
        if is_ephemeral(request.volume_context):
            await self._publish_ephemeral(request, await self._real_path(*target_field))
            return
        target, staging = await self._real_paths(
            target_field, (Path(request.staging_path), "staging_target_path")
        )
        volume = await self._volumes.get(request.volume_id)
        await self._ctx.operations.run(
            f"volume:{volume.id}",
            ("publish", request),
            "NodePublishVolume",
            lambda: self._publish(volume, request, _Points(staging, target)),
        )

    async def _check_publish_conflicts(
        self, volume: Volume, request: PublishVolume
    ) -> Publication | None:
        """The publication already at the target (if any); refuse incompatible ones."""
        same: Publication | None = None
        others: list[Publication] = []
        for pub in self._store.publications(volume.id, PublicationKind.PUBLISH):
            if pub.path == request.target_path:
                same = pub
            else:
                others.append(pub)
        if same is not None and (
            same.capability != request.capability or same.read_only != request.read_only
        ):
            raise AlreadyExists(
                f"volume {volume.id} is already published at {request.target_path} with a "
                "different capability or read-only flag"
            )
        if others and (
            _is_single_writer(request.capability)
            or any(_is_single_writer(p.capability) for p in others)
        ):
            raise FailedPrecondition(
                f"volume {volume.id} is SINGLE_NODE_SINGLE_WRITER and may be published at one "
                f"target only; it is already published at {others[0].path}"
            )
        return same

    async def _publish(self, volume: Volume, request: PublishVolume, points: _Points) -> None:
        target = Path(request.target_path)
        capability = request.capability
        await self._refuse_path_of_another(volume, target)
        recorded = await self._check_publish_conflicts(volume, request)
        stage = await self._find(volume.id, PublicationKind.STAGE, request.staging_path)
        device = await self._device(volume)
        if stage is None or device is None:
            raise FailedPrecondition(
                f"volume {volume.id} is not staged at {request.staging_path!r}; stage it first"
            )
        if stage.capability is not None and stage.capability.access_type != capability.access_type:
            raise FailedPrecondition(
                f"volume {volume.id} is staged for {stage.capability.access_type} access, "
                f"not {capability.access_type}"
            )
        if capability.access_type is AccessType.MOUNT:
            # Binding an empty staging directory would hand out the node's own filesystem.
            _, staged = await self._our_top_mount(points.staging, device)
            if not staged:
                raise FailedPrecondition(
                    f"volume {volume.id} is no longer mounted at {request.staging_path}; "
                    "stage it again"
                )
        if await self._already_bound(
            volume, request, device, points.target, recorded=recorded is not None
        ):
            return
        async with AsyncExitStack() as undo:
            source = str(points.staging)
            make: mount.MakeTarget = "dir"
            if capability.access_type is AccessType.BLOCK:
                source, make = device, "file"
                if request.read_only:
                    # A read-only bind of a device node still lets writes through it.
                    source = await self._read_only_view(volume, device, undo)
            async with _host_step(f"publishing volume {volume.id} at {target}"):
                created = await mount.bind_mount(
                    source, points.target, read_only=request.read_only, make_target=make
                )
            undo.push_async_callback(self._undo_mount, points.target, device, created)
            await self._record_publication(volume, request)
            undo.pop_all()
        log.info(
            "volume_published", volume_id=volume.id, path=str(target), read_only=request.read_only
        )

    async def _read_only_view(self, volume: Volume, device: str, undo: AsyncExitStack) -> str:
        """A read-only view of `device` for one publication; one nothing uses is reused."""
        _, unused = await self._device_use(device)
        if unused:  # left by a try that stopped before binding it
            return unused[0]
        async with _host_step(f"attaching a read-only view of volume {volume.id}"):
            view = await loop.attach_view(device)
        undo.push_async_callback(self._detach_quietly, view)
        return view

    async def _already_bound(
        self, volume: Volume, request: PublishVolume, device: str, target: Path, *, recorded: bool
    ) -> bool:
        """Whether the target (canonical) already shows this volume (and is recorded now);
        foreign -> refuse."""
        top, ours = await self._our_top_mount(target, device)
        if top is None:
            return False
        if not ours:
            raise FailedPrecondition(f"{target} already has a foreign mount of {top.source}")
        if request.read_only and not await threads.run_sync(_refuses_writes, top, target):
            raise AlreadyExists(f"{target} already has a read-write mount of {volume.id}")
        if not recorded:  # mounted by a try that stopped before recording it
            await self._record_publication(volume, request)
        return True

    async def _record_publication(self, volume: Volume, request: PublishVolume) -> None:
        await self._store.add_publication(
            Publication(
                volume.id,
                PublicationKind.PUBLISH,
                request.target_path,
                self._ctx.config.node_id,
                request.read_only,
                request.capability,
            )
        )

    # -- unpublish ------------------------------------------------------------------------

    async def unpublish(self, volume_id: str, target_path: str) -> None:
        try:
            volume = await self._volume_or_ephemeral(volume_id)
        except NotFound:
            # An inline ephemeral volume is deleted by its unpublish: a retry finds neither
            # the volume nor the target, and that is success.
            if not await threads.run_sync(os.path.lexists, target_path):
                return
            raise
        real = await self._real_path(Path(target_path), "target_path")
        await self._ctx.operations.run(
            f"volume:{volume.id}",
            ("unpublish", target_path),
            "NodeUnpublishVolume",
            lambda: self._unpublish(volume, Path(target_path), real),
        )

    async def _unpublish(self, volume: Volume, target: Path, real: Path) -> None:
        device = await self._device(volume)
        pub = await self._find(volume.id, PublicationKind.PUBLISH, str(target))
        async with _host_step(f"unpublishing volume {volume.id} from {target}"):
            await self._unmount_ours(real, device, remove_target=True)
        # Only a read-only block publication has a view to detach; without a record (a retry
        # after a crash), one may have been left behind.
        if device is not None and (
            pub is None or (_access_type(pub) is AccessType.BLOCK and pub.read_only)
        ):
            await self._detach_unused_views(device)
        await self._store.remove_publication(volume.id, PublicationKind.PUBLISH, str(target))
        log.info("volume_unpublished", volume_id=volume.id, path=str(target))
        if volume.ephemeral:
            await self._remove_ephemeral(volume)

    # -- ephemeral inline volumes ---------------------------------------------------------

    async def _ephemeral_volume(self, co_volume_id: str) -> Volume | None:
        volume = self._store.get_volume_by_name(EPHEMERAL_PREFIX + co_volume_id)
        return volume if volume is not None and volume.ephemeral else None

    async def _publish_ephemeral(self, request: PublishVolume, target: Path) -> None:
        try:
            size = parse_size(request.volume_context.get("size", DEFAULT_EPHEMERAL_SIZE))
        except ConfigError as exc:
            raise InvalidArgument(f"volume_context size: {exc}") from None
        if request.capability.access_type is not AccessType.MOUNT:
            raise InvalidArgument("ephemeral inline volumes must use the mount access type")
        volume = await self._volumes.create(
            CreateVolume(
                name=EPHEMERAL_PREFIX + request.volume_id,
                capacity=CapacityRange(required_bytes=size),
                capabilities=(request.capability,),
            ),
            {},
            ephemeral=True,
        )
        # One operation for stage + publish, so that an unpublish cannot slip in between.
        await self._ctx.operations.run(
            f"volume:{volume.id}",
            ("publish-ephemeral", request),
            "NodePublishVolume",
            lambda: self._stage_and_publish_ephemeral(volume, request, target),
        )

    async def _stage_and_publish_ephemeral(
        self, volume: Volume, request: PublishVolume, target: Path
    ) -> None:
        staging = self._pool.ephemeral_staging(volume.id)
        try:
            real = await mount.canonical(staging)
            await self._stage(volume, staging, real, request.capability)
            await self._publish(
                volume,
                dataclasses.replace(
                    request, volume_id=volume.id, staging_path=str(staging), volume_context={}
                ),
                _Points(real, target),
            )
        except BaseException:
            # Nobody can use a volume that is published nowhere: remove it, and a retry
            # starts afresh. One that is published elsewhere stays (_unstage refuses).
            with contextlib.suppress(Exception):
                await self._remove_ephemeral(volume)
            raise

    async def _remove_ephemeral(self, volume: Volume) -> None:
        staging = self._pool.ephemeral_staging(volume.id)
        await self._unstage(volume, staging, await mount.canonical(staging))
        await _remove_path(staging)
        # Already inside this volume's operation: call the unlocked step directly.
        await self._volumes._delete(volume.id)  # noqa: SLF001 - same operation, key held

    # -- stats / expand -------------------------------------------------------------------

    async def _user_at(self, volume_id: str, path: str) -> tuple[Volume, Publication]:
        volume = await self._volume_or_ephemeral(volume_id)
        for pub in self._store.publications(volume.id):
            if pub.kind is not PublicationKind.CONTROLLER and pub.path == path:
                return volume, pub
        raise NotFound(f"volume {volume_id} is not staged or published at {path}")

    async def stats(self, volume_id: str, volume_path: str) -> VolumeStats:
        volume, pub = await self._user_at(volume_id, volume_path)
        access = _access_type(pub)
        path = await mount.canonical(Path(volume_path))
        condition = await self._volumes.condition(volume)
        device = await self._device(volume)
        if device is None:
            condition = _worse(condition, f"volume {volume.id} has no loop device attached")
        if access is AccessType.BLOCK:
            if pub.kind is PublicationKind.PUBLISH:
                _, ours = await self._our_top_mount(path, device)
                if not ours:
                    condition = _worse(condition, f"{volume_path} no longer holds the device")
            size = await loop.device_size(device) if device else 0
            return VolumeStats(access, condition, size_bytes=size)
        top, ours = await self._our_top_mount(path, device)
        if top is None or not ours:
            what = "is not mounted" if top is None else f"has a foreign mount of {top.source}"
            return VolumeStats(access, _worse(condition, f"{volume_path} {what}"), fs=_NO_FS_STATS)
        if "ro" in top.super_options and not _asks_read_only(pub.capability):
            condition = _worse(
                condition, f"the filesystem at {volume_path} is read-only (remounted after errors?)"
            )
        return VolumeStats(access, condition, fs=await fs.fs_stats(path))

    async def expand(self, volume_id: str, volume_path: str, capacity: CapacityRange) -> int:
        volume, pub = await self._user_at(volume_id, volume_path)
        return await self._ctx.operations.run(
            f"volume:{volume.id}",
            ("node-expand", capacity),
            "NodeExpandVolume",
            lambda: self._expand(volume, pub, capacity),
        )

    async def _expand(self, volume: Volume, pub: Publication, capacity: CapacityRange) -> int:
        # Read again under the operation's key: a ControllerExpand may have finished since.
        volume = await self._volumes.get(volume.id)
        # Grows the image when the controller has not (node-only expansion).
        size, volume = await self._volumes._expand(volume, capacity)  # noqa: SLF001 - same operation, key already held
        device = await self._device(volume)
        if device is None:
            raise FailedPrecondition(f"volume {volume.id} is not attached on this node")
        async with _host_step(f"growing volume {volume.id}"):
            await loop.refresh_size(device)
            for view in loop.views_on(device, await loop.loop_backing_files()):
                await loop.refresh_size(view)
        if _access_type(pub) is AccessType.MOUNT:
            await self._grow_filesystem(volume, device)
        log.info("volume_node_expanded", volume_id=volume.id, bytes=size)
        return size

    async def _grow_filesystem(self, volume: Volume, device: str) -> None:
        # Grown through the staging mount: a read-only publication would refuse xfs_growfs.
        stages = self._store.publications(volume.id, PublicationKind.STAGE)
        for stage in stages:
            top, ours = await self._our_top_mount(await mount.canonical(Path(stage.path)), device)
            if top is not None and ours:
                if top.fs_type not in fs.SUPPORTED_FS_TYPES:
                    raise FailedPrecondition(
                        f"volume {volume.id} holds a {top.fs_type} filesystem, which aiocsi "
                        "cannot grow"
                    )
                # Already as large as the device allows (grown at stage, or a retry): done,
                # without a process, and without asking a refusing kernel again.
                if await fs.can_grow(device, top.fs_type):
                    await self._grow_filesystem_at(volume, device, top.fs_type, Path(stage.path))
                return
        raise FailedPrecondition(f"volume {volume.id} is not mounted on this node")

    async def _grow_filesystem_at(
        self, volume: Volume, device: str, fs_type: str, mount_point: Path | None
    ) -> None:
        """Grow the filesystem to fill the device: mounted at `mount_point`, or unmounted."""
        async with _host_step(f"growing the filesystem of volume {volume.id}"):
            if mount_point is not None:
                await fs.grow_fs(device, mount_point, fs_type)
            else:
                # Whole-device work like mkfs (e2fsck reads every group): the same limit.
                async with self._ctx.mkfs_slots:
                    await fs.grow_offline(device, fs_type)
        log.info(
            "volume_filesystem_grown",
            volume_id=volume.id,
            fs_type=fs_type,
            mounted=mount_point is not None,
        )


def _is_ours_sync(entry: mount.MountEntry, path: Path, device: str | None) -> bool:
    # A block publication binds the device node (or a read-only view's): its source is the
    # filesystem holding /dev (devtmpfs), so look at the node itself instead.
    return device is not None and (entry.source == device or _shows_device(path, device))


def _unmount_ours_sync(point: Path, device: str | None, *, remove_target: bool) -> None:
    """`NodeService._unmount_ours` in a worker thread: every step blocks, none waits long."""
    for _ in range(_MAX_STACKED_MOUNTS):
        entries = mount.mounts_at_point(point)
        if not entries:
            break
        top = entries[-1]
        if not _is_ours_sync(top, point, device):
            raise FailedPrecondition(
                f"{point} has a mount of {top.source} that does not belong to this volume"
            )
        mount.unmount_sync(point)
    else:
        raise FailedPrecondition(f"{point} is still mounted after {_MAX_STACKED_MOUNTS} unmounts")
    if remove_target:
        _remove_target_sync(point)


def _shows_device(path: Path, device: str) -> bool:
    """Whether `path` is the node of `device`, or of a read-only view stacked on it."""
    shown = loop.loop_device_of(path)
    return shown is not None and (shown == device or loop.backing_file(shown) == device)


def _refuses_writes(entry: mount.MountEntry, path: Path) -> bool:
    """Whether the mount `entry` at `path` refuses writes: for a device node, the device must."""
    if not entry.read_only:
        return False
    shown = loop.loop_device_of(path)
    return shown is None or loop.is_read_only(shown)


def _resolve_under(path: Path, roots: Sequence[Path]) -> Path | None:
    """`path` resolved; None when it resolves outside every root (no roots: anywhere)."""
    resolved = files.canonical_sync(path)
    if not roots:
        return resolved
    for root in roots:
        real_root = files.canonical_sync(root)
        if resolved != real_root and resolved.is_relative_to(real_root):
            return resolved
    return None


async def _remove_path(path: Path) -> None:
    """Remove an empty directory or an empty file we made; gone is fine."""
    await threads.run_sync(files.remove_empty_sync, path)


def _remove_target_sync(path: Path) -> None:
    try:
        files.remove_empty_sync(path)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            # Not a mount any more, yet it holds files: never delete what may be data.
            raise FailedPrecondition(
                f"{path} is not mounted but not empty; it is left for an operator"
            ) from exc
        raise


async def _remove_target(path: Path) -> None:
    await threads.run_sync(_remove_target_sync, path)
