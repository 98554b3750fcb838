"""NodeGetVolumeStats and NodeExpandVolume: what a staged or published volume shows, and
growing it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aiocsi.engine import policy
from aiocsi.engine.host_errors import host_step
from aiocsi.engine.node.base import access_type, asks_read_only, worse
from aiocsi.engine.node.inline import InlineVolumes
from aiocsi.engine.operations import OperationKey
from aiocsi.engine.requests import CapacityRange
from aiocsi.errors import FailedPrecondition, NotFound
from aiocsi.host import fs, mount, sysfs
from aiocsi.host.fs import FsStats
from aiocsi.logging import get_logger
from aiocsi.models import (
    AccessType,
    Capability,
    Publication,
    PublicationKind,
    Volume,
    VolumeCondition,
)

log = get_logger("aiocsi.engine")


_NO_FS_STATS = FsStats(0, 0, 0, 0, 0, 0)


@dataclass(frozen=True)
class VolumeStats:
    access_type: AccessType
    condition: VolumeCondition
    fs: FsStats | None = None
    size_bytes: int = 0


class NodeVolumes(InlineVolumes):
    """Node-side volume work, for the Node service of any front end."""

    async def _user_at(self, volume_id: str, path: str) -> tuple[Volume, Publication]:
        volume = self._volume_or_ephemeral(volume_id)
        for pub in self._store.publications(volume.id):
            if pub.kind is not PublicationKind.CONTROLLER and pub.path == path:
                return volume, pub
        raise NotFound(f"volume {volume_id} is not staged or published at {path}")

    async def stats(self, volume_id: str, volume_path: str) -> VolumeStats:
        volume, pub = await self._user_at(volume_id, volume_path)
        access = access_type(pub)
        path = await mount.canonical(self._workers, Path(volume_path))
        condition = await self._volumes.condition(volume)
        device = self._device(volume)
        if device is None:
            condition = worse(condition, f"volume {volume.id} has no loop device attached")
        if access is AccessType.BLOCK:
            if pub.kind is PublicationKind.PUBLISH:
                _, ours = await self._our_top_mount(path, device)
                if not ours:
                    condition = worse(condition, f"{volume_path} no longer holds the device")
            size = sysfs.device_size_bytes(device) if device else 0
            return VolumeStats(access, condition, size_bytes=size)
        top, ours = await self._our_top_mount(path, device)
        if top is None or not ours:
            what = "is not mounted" if top is None else f"has a foreign mount of {top.source}"
            return VolumeStats(access, worse(condition, f"{volume_path} {what}"), fs=_NO_FS_STATS)
        if "ro" in top.super_options and not asks_read_only(pub.capability):
            condition = worse(
                condition, f"the filesystem at {volume_path} is read-only (remounted after errors?)"
            )
        return VolumeStats(access, condition, fs=await fs.fs_stats(self._workers, path))

    async def expand(
        self,
        volume_id: str,
        volume_path: str,
        capacity: CapacityRange,
        capability: Capability | None = None,
    ) -> int:
        if capability is not None:
            policy.capability(capability, "volume_capability", self._allowed_flags)
        volume, pub = await self._user_at(volume_id, volume_path)
        return await self._ctx.operations.run(
            OperationKey.volume(volume.id),
            ("node-expand", capacity),
            "NodeExpandVolume",
            lambda: self._expand(volume, pub, capacity),
        )

    async def _expand(self, volume: Volume, pub: Publication, capacity: CapacityRange) -> int:
        # Read again under the operation's key: a ControllerExpand may have finished since.
        volume = self._volumes.get(volume.id)
        # Grows the image when the controller has not (node-only expansion).
        size, volume = await self._volumes.expand_while_held(volume, capacity)
        device = self._device(volume)
        if device is None:
            raise FailedPrecondition(f"volume {volume.id} is not attached on this node")
        with host_step(f"growing volume {volume.id}"):
            await self._loops.refresh_size(device)
            for view in sysfs.views_on(device, sysfs.all_loop_backing_files()):
                await self._loops.refresh_size(view)
        if access_type(pub) is AccessType.MOUNT:
            await self._grow_filesystem(volume, device)
        log.info("volume_node_expanded", volume_id=volume.id, bytes=size)
        return size

    async def _grow_filesystem(self, volume: Volume, device: str) -> None:
        # Grown through the staging mount: a read-only publication would refuse xfs_growfs.
        stages = self._store.publications(volume.id, PublicationKind.STAGE)
        for stage in stages:
            top, ours = await self._our_top_mount(
                await mount.canonical(self._workers, Path(stage.path)), device
            )
            if top is not None and ours:
                if top.fs_type not in fs.SUPPORTED_FS_TYPES:
                    raise FailedPrecondition(
                        f"volume {volume.id} holds a {top.fs_type} filesystem, which aiocsi "
                        "cannot grow"
                    )
                # Already as large as the device allows (grown at stage, or a retry): done,
                # without a process, and without asking a refusing kernel again.
                if await fs.can_grow(self._workers, device, top.fs_type):
                    await self._grow_filesystem_at(volume, device, top.fs_type, Path(stage.path))
                return
        raise FailedPrecondition(f"volume {volume.id} is not mounted on this node")
