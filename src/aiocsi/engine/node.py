"""Node-side volume work: loop devices, formats, mounts (DESIGN.md §3, §4).

Every step is an "ensure": it looks before it acts, so a retry after a timeout or a crash
continues where the last try stopped. A failed call undoes only what it did itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import anyio

from aiocsi.config import ConfigError, parse_size
from aiocsi.engine.context import EngineContext
from aiocsi.engine.requests import CapacityRange, CreateVolume, PublishVolume, StageVolume
from aiocsi.engine.volumes import DEFAULT_FS, VolumeService
from aiocsi.errors import (
    AlreadyExists,
    CommandFailed,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from aiocsi.host import files, fs, loop, mount
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


@dataclass(frozen=True)
class VolumeStats:
    access_type: AccessType
    condition: VolumeCondition
    fs: FsStats | None = None
    size_bytes: int = 0


def is_ephemeral(context: dict[str, str]) -> bool:
    return context.get(EPHEMERAL_KEY, "").lower() == "true"


def _host_failure(what: str, exc: CommandFailed) -> Internal | ResourceExhausted:
    if isinstance(exc, loop.LoopDevicesExhausted):
        return ResourceExhausted(f"{what}: no free loop device on this node")
    return Internal(f"{what}: {exc}")


@contextlib.asynccontextmanager
async def _host_step(what: str) -> AsyncIterator[None]:
    try:
        yield
    except CommandFailed as exc:
        raise _host_failure(what, exc) from exc


class NodeService:
    def __init__(self, ctx: EngineContext, volumes: VolumeService) -> None:
        self._ctx = ctx
        self._store = ctx.store
        self._pool = ctx.pool
        self._volumes = volumes

    # -- helpers --------------------------------------------------------------------------

    async def _device(self, volume: Volume) -> str | None:
        devices = await loop.find_loop_devices(self._pool.volume_image(volume.id))
        return devices[0] if devices else None

    async def _top_mount(self, path: Path) -> mount.MountEntry | None:
        entries = await mount.mounts_at(path)
        return entries[-1] if entries else None

    async def _find(self, volume_id: str, kind: PublicationKind, path: str) -> Publication | None:
        for pub in await self._store.publications(volume_id, kind):
            if pub.path == path:
                return pub
        return None

    # -- stage ----------------------------------------------------------------------------

    async def stage(self, request: StageVolume) -> None:
        volume = await self._volumes.get(request.volume_id)
        await self._ctx.operations.run(
            f"volume:{volume.id}", ("stage", request), "NodeStageVolume",
            lambda: self._stage(volume, Path(request.staging_path), request.capability),
        )

    async def _stage(self, volume: Volume, staging: Path, capability: Capability) -> None:
        for pub in await self._store.publications(volume.id, PublicationKind.STAGE):
            if pub.path != str(staging):
                raise FailedPrecondition(
                    f"volume {volume.id} is already staged at {pub.path}; unstage it first"
                )
            if pub.capability != capability:
                raise AlreadyExists(
                    f"volume {volume.id} is staged at {staging} with a different capability"
                )
        async with AsyncExitStack() as undo:
            device = await self._ensure_attached(volume, undo)
            if capability.access_type is AccessType.MOUNT:
                await self._ensure_mounted(volume, device, staging, capability, undo)
            await self._store.add_publication(
                Publication(volume.id, PublicationKind.STAGE, str(staging),
                            self._ctx.config.node_id, capability=capability)
            )
            undo.pop_all()
        log.info("volume_staged", volume_id=volume.id, device=device, path=str(staging))

    async def _ensure_attached(self, volume: Volume, undo: AsyncExitStack) -> str:
        device = await self._device(volume)
        if device is not None:
            return device
        async with _host_step(f"attaching volume {volume.id}"):
            device = await loop.attach(self._pool.volume_image(volume.id))
        undo.push_async_callback(self._detach_quietly, device)
        return device

    async def _detach_quietly(self, device: str) -> None:
        with contextlib.suppress(CommandFailed):
            await loop.detach(device)

    async def _ensure_mounted(
        self, volume: Volume, device: str, staging: Path, capability: Capability,
        undo: AsyncExitStack,
    ) -> None:
        top = await self._top_mount(staging)
        if top is not None:
            if top.source != device:
                raise FailedPrecondition(
                    f"{staging} already has a mount of {top.source} that is not volume {volume.id}"
                )
            return
        wanted = capability.fs_type or DEFAULT_FS
        async with _host_step(f"formatting volume {volume.id}"):
            found = await fs.probe_fs_type(device)
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
        await anyio.Path(staging).mkdir(parents=True, exist_ok=True)
        options = list(capability.mount_flags)
        if capability.access_mode is AccessMode.SINGLE_NODE_READER_ONLY:
            options.append("ro")
        async with _host_step(f"mounting volume {volume.id} at {staging}"):
            await mount.mount(device, staging, fs_type=found, options=options)
        undo.push_async_callback(mount.unmount, staging)

    # -- unstage --------------------------------------------------------------------------

    async def unstage(self, volume_id: str, staging_path: str) -> None:
        volume = await self._volumes.get(volume_id)
        await self._ctx.operations.run(
            f"volume:{volume.id}", ("unstage", staging_path), "NodeUnstageVolume",
            lambda: self._unstage(volume, Path(staging_path)),
        )

    async def _unstage(self, volume: Volume, staging: Path) -> None:
        published = await self._store.publications(volume.id, PublicationKind.PUBLISH)
        if published:
            paths = ", ".join(p.path for p in published)
            raise FailedPrecondition(f"volume {volume.id} is still published at {paths}")
        device = await self._device(volume)
        async with _host_step(f"unmounting volume {volume.id} from {staging}"):
            await self._unmount_ours(staging, device)
            if device is not None:
                await loop.detach(device)
        await self._store.remove_publication(volume.id, PublicationKind.STAGE, str(staging))
        log.info("volume_unstaged", volume_id=volume.id, path=str(staging))

    async def _unmount_ours(self, path: Path, device: str | None) -> None:
        """Unmount every mount of `device` stacked at `path`; refuse to touch anything else."""
        while (top := await self._top_mount(path)) is not None:
            if device is None or top.source != device:
                raise FailedPrecondition(
                    f"{path} has a mount of {top.source} that does not belong to this volume"
                )
            await mount.unmount(path)

    # -- publish --------------------------------------------------------------------------

    async def publish(self, request: PublishVolume) -> None:
        if is_ephemeral(request.volume_context):
            await self._publish_ephemeral(request)
            return
        volume = await self._volumes.get(request.volume_id)
        await self._ctx.operations.run(
            f"volume:{volume.id}", ("publish", request), "NodePublishVolume",
            lambda: self._publish(volume, request),
        )

    async def _publish(self, volume: Volume, request: PublishVolume) -> None:
        target = Path(request.target_path)
        capability = request.capability
        for pub in await self._store.publications(volume.id, PublicationKind.PUBLISH):
            if pub.path == str(target):
                if pub.capability != capability or pub.read_only != request.read_only:
                    raise AlreadyExists(
                        f"volume {volume.id} is already published at {target} with a different "
                        "capability or read-only flag"
                    )
                if await self._top_mount(target) is not None:
                    return
            elif capability.access_mode is AccessMode.SINGLE_NODE_SINGLE_WRITER:
                raise FailedPrecondition(
                    f"volume {volume.id} is SINGLE_NODE_SINGLE_WRITER and already published "
                    f"at {pub.path}"
                )
        stage = await self._find(volume.id, PublicationKind.STAGE, request.staging_path)
        device = await self._device(volume)
        if stage is None or device is None:
            raise FailedPrecondition(
                f"volume {volume.id} is not staged at {request.staging_path!r}; stage it first"
            )
        async with AsyncExitStack() as undo:
            if capability.access_type is AccessType.MOUNT:
                source: str = request.staging_path
                created = await _ensure_dir(target)
            else:
                source = device
                created = await _ensure_file(target)
            if created:
                undo.push_async_callback(_remove_path, target)
            top = await self._top_mount(target)
            if top is None:
                async with _host_step(f"publishing volume {volume.id} at {target}"):
                    await mount.bind_mount(source, target, read_only=request.read_only)
            elif top.source != device:
                raise FailedPrecondition(f"{target} already has a foreign mount of {top.source}")
            await self._store.add_publication(
                Publication(volume.id, PublicationKind.PUBLISH, str(target),
                            self._ctx.config.node_id, request.read_only, capability)
            )
            undo.pop_all()
        log.info("volume_published", volume_id=volume.id, path=str(target),
                 read_only=request.read_only)

    # -- unpublish ------------------------------------------------------------------------

    async def unpublish(self, volume_id: str, target_path: str) -> None:
        volume = await self._ephemeral_volume(volume_id) or await self._volumes.get(volume_id)
        await self._ctx.operations.run(
            f"volume:{volume.id}", ("unpublish", target_path), "NodeUnpublishVolume",
            lambda: self._unpublish(volume, Path(target_path)),
        )

    async def _unpublish(self, volume: Volume, target: Path) -> None:
        device = await self._device(volume)
        async with _host_step(f"unpublishing volume {volume.id} from {target}"):
            await self._unmount_ours(target, device)
        await _remove_path(target)
        await self._store.remove_publication(volume.id, PublicationKind.PUBLISH, str(target))
        log.info("volume_unpublished", volume_id=volume.id, path=str(target))
        if volume.ephemeral:
            staging = self._pool.ephemeral_staging(volume.id)
            await self._unstage(volume, staging)
            await _remove_path(staging)
            await self._volumes.delete(volume.id)

    # -- ephemeral inline volumes ---------------------------------------------------------

    async def _ephemeral_volume(self, co_volume_id: str) -> Volume | None:
        volume = await self._store.get_volume_by_name(EPHEMERAL_PREFIX + co_volume_id)
        return volume if volume is not None and volume.ephemeral else None

    async def _publish_ephemeral(self, request: PublishVolume) -> None:
        try:
            size = parse_size(request.volume_context.get("size", "1Gi"))
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
            {}, ephemeral=True,
        )
        staging = self._pool.ephemeral_staging(volume.id)
        try:
            await self.stage(StageVolume(volume.id, str(staging), request.capability))
            await self.publish(
                dataclasses.replace(
                    request, volume_id=volume.id, staging_path=str(staging), volume_context={}
                )
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await self._unstage(volume, staging)
                await self._volumes.delete(volume.id)
            raise

    # -- stats / expand -------------------------------------------------------------------

    async def _user_at(self, volume_id: str, path: str) -> tuple[Volume, Publication]:
        volume = await self._volumes.get(volume_id)
        for pub in await self._store.publications(volume.id):
            if pub.kind is not PublicationKind.CONTROLLER and pub.path == path:
                return volume, pub
        raise NotFound(f"volume {volume_id} is not staged or published at {path}")

    async def stats(self, volume_id: str, volume_path: str) -> VolumeStats:
        volume, pub = await self._user_at(volume_id, volume_path)
        access = pub.capability.access_type if pub.capability else AccessType.MOUNT
        condition = await self._volumes.condition(volume)
        device = await self._device(volume)
        if device is None and not condition.abnormal:
            condition = VolumeCondition(True, f"volume {volume.id} has no loop device attached")
        if access is AccessType.BLOCK:
            size = await loop.device_size(device) if device else 0
            return VolumeStats(access, condition, size_bytes=size)
        top = await self._top_mount(Path(volume_path))
        if top is None:
            condition = VolumeCondition(True, f"{volume_path} is not mounted")
            return VolumeStats(access, condition, fs=FsStats(0, 0, 0, 0, 0, 0))
        if top.read_only and not pub.read_only and "ro" not in (
            pub.capability.mount_flags if pub.capability else ()
        ) and not condition.abnormal:
            condition = VolumeCondition(
                True, f"the filesystem at {volume_path} is read-only (remounted after errors?)"
            )
        return VolumeStats(access, condition, fs=await fs.fs_stats(Path(volume_path)))

    async def expand(
        self, volume_id: str, volume_path: str, capacity: CapacityRange
    ) -> int:
        volume, pub = await self._user_at(volume_id, volume_path)
        return await self._ctx.operations.run(
            f"volume:{volume.id}", ("node-expand", capacity), "NodeExpandVolume",
            lambda: self._expand(volume, pub, capacity),
        )

    async def _expand(self, volume: Volume, pub: Publication, capacity: CapacityRange) -> int:
        size, volume = await self._volumes._expand(volume, capacity)  # noqa: SLF001 - same operation, key already held
        device = await self._device(volume)
        if device is None:
            raise FailedPrecondition(f"volume {volume.id} is not attached on this node")
        async with _host_step(f"growing volume {volume.id}"):
            await loop.refresh_size(device)
            access = pub.capability.access_type if pub.capability else AccessType.MOUNT
            if access is AccessType.MOUNT:
                found = await fs.probe_fs_type(device)
                if found is None:
                    raise FailedPrecondition(f"volume {volume.id} has no filesystem to grow")
                await fs.grow_fs(device, Path(pub.path), found)
        log.info("volume_node_expanded", volume_id=volume.id, bytes=size)
        return size


async def _ensure_dir(path: Path) -> bool:
    if await anyio.Path(path).is_dir():
        return False
    await anyio.Path(path).mkdir(mode=0o750, parents=True)
    return True


async def _ensure_file(path: Path) -> bool:
    if await anyio.Path(path).exists():
        return False
    await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
    await anyio.Path(path).touch(mode=0o600)
    return True


async def _remove_path(path: Path) -> None:
    """Remove a target we created: an empty directory or a plain file; gone is fine."""
    def remove() -> None:
        with contextlib.suppress(FileNotFoundError):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                os.unlink(path)

    await anyio.to_thread.run_sync(remove)
