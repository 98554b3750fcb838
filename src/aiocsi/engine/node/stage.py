"""NodeStageVolume and NodeUnstageVolume: the loop device, the filesystem, the staging
mount."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

from aiocsi.engine import policy
from aiocsi.engine.host_errors import host_step, pool_write_step
from aiocsi.engine.node.base import NodeCommon, access_type
from aiocsi.engine.operations import OperationKey
from aiocsi.engine.requests import StageVolume
from aiocsi.engine.sizing import DEFAULT_FS
from aiocsi.errors import AlreadyExists, FailedPrecondition
from aiocsi.host import fs, loop, mount, ownership
from aiocsi.logging import get_logger
from aiocsi.models import AccessMode, AccessType, Capability, Publication, PublicationKind, Volume

log = get_logger("aiocsi.engine")


class Staging(NodeCommon):
    """Stage and unstage."""

    async def stage(self, request: StageVolume) -> None:
        policy.stage_request(request, self._allowed_flags)
        volume = self._volumes.get(request.volume_id)
        staging = Path(request.staging_path)
        real = await self._real_path(staging, "staging_target_path")
        await self._ctx.operations.run(
            OperationKey.volume(volume.id),
            ("stage", request),
            "NodeStageVolume",
            lambda: self._stage(volume, staging, real, request.capability),
        )

    async def _stage(
        self, volume: Volume, staging: Path, real: Path, capability: Capability
    ) -> None:
        """Stage at `staging` (recorded as given); `real` is its canonical path."""
        self._refuse_path_of_another(volume, staging)
        recorded = False
        for pub in self._store.publications(volume.id, PublicationKind.STAGE):
            if pub.path != str(staging):
                raise FailedPrecondition(
                    f"volume {volume.id} is already staged at {pub.path}; unstage it first"
                )
            if pub.capability != capability:
                raise AlreadyExists(
                    f"volume {volume.id} is staged at {staging} with a different capability"
                    + _group_difference(pub.capability, capability)
                )
            recorded = True
        if capability.access_type is AccessType.MOUNT and capability.fs_type:
            await self._require_fs_tools(capability.fs_type)
        async with AsyncExitStack() as undo:
            attached = await self._ensure_attached(volume, capability, undo)
            device = attached.device
            if capability.access_type is AccessType.MOUNT:
                await self._ensure_mounted(volume, attached, real, capability, undo)
                if not recorded:  # once: a repeated stage leaves the root as the pod made it
                    await self._give_mount_group(volume, real, capability)
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

    async def _give_mount_group(self, volume: Volume, root: Path, capability: Capability) -> None:
        """The volume_mount_group on the mounted filesystem's root directory (only there)."""
        gid = policy.mount_group(capability, "volume_capability")
        if gid is None:
            return
        if policy.is_read_only(capability):
            # A read-only filesystem cannot change; the kubelet skips fsGroup for those too.
            log.info("volume_mount_group_skipped", volume_id=volume.id, reason="read-only")
            return
        with host_step(f"giving volume {volume.id} the mount group {gid}"):
            await ownership.give_group(self._workers, root, gid)
        log.info("volume_mount_group_applied", volume_id=volume.id, gid=gid, path=str(root))

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
        with host_step(f"attaching volume {volume.id}"):
            # attach() returns the device already backed by the image (never a second one)
            # and refuses one attached in the other mode.
            attached = await self._loops.attach(
                self._pool.volume_image(volume.id), read_only=read_only
            )
        if attached.new:
            undo.push_async_callback(self._detach_quietly, attached.device)
            await self._ctx.space.attached(attached.device)
        return attached

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
        async with pool_write_step(f"formatting volume {volume.id}", self._ctx.space, device):
            # An image with no data at all, just attached, carries no signature: no probe.
            found = None if attached.blank else await fs.probe_fs_type(self._workers, device)
            formatted = found is None
            # Refused whole, not only when formatting: a node that cannot grow a
            # filesystem must not hand it out.
            await self._require_fs_tools(found or wanted)
            if found is None:
                async with self._ctx.mkfs_slots:
                    await fs.make_fs(self._workers, device, wanted)
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
            and await fs.can_grow(self._workers, device, found)
        )
        if grow and found in fs.GROWS_OFFLINE:
            await self._grow_filesystem_at(volume, device, found, None)
        with host_step(f"mounting volume {volume.id} at {staging}"):
            # mount(2) either mounts or leaves nothing; a directory it made is undone with it.
            created = await mount.mount(
                self._workers, device, staging, fs_type=found, options=options, make_target="dir"
            )
        undo.push_async_callback(self._undo_mount, staging, device, created)
        if grow and found not in fs.GROWS_OFFLINE:  # xfs and btrfs grow only while mounted
            await self._grow_filesystem_at(volume, device, found, staging)

    async def unstage(self, volume_id: str, staging_path: str) -> None:
        volume = self._volumes.get(volume_id)
        real = await self._real_path(Path(staging_path), "staging_target_path")
        await self._ctx.operations.run(
            OperationKey.volume(volume.id),
            ("unstage", staging_path),
            "NodeUnstageVolume",
            lambda: self._unstage(volume, Path(staging_path), real),
        )

    async def _unstage(self, volume: Volume, staging: Path, real: Path) -> None:
        published = self._store.publications(volume.id, PublicationKind.PUBLISH)
        if published:
            paths = ", ".join(p.path for p in published)
            raise FailedPrecondition(f"volume {volume.id} is still published at {paths}")
        device = self._device(volume)
        stage = self._find(volume.id, PublicationKind.STAGE, str(staging))
        with host_step(f"unmounting volume {volume.id} from {staging}"):
            await self._unmount_ours(real, device)
        await self._store.remove_publication(volume.id, PublicationKind.STAGE, str(staging))
        # Staged somewhere else: this path was not (or no longer) its staging path, and the
        # device still serves the other one.
        still_staged = self._store.publications(volume.id, PublicationKind.STAGE)
        if device is not None and not still_staged:
            # Only block publications get read-only views; without a record, look anyway.
            views = stage is None or access_type(stage) is AccessType.BLOCK
            await self._release_device(volume, device, views=views)
        log.info("volume_unstaged", volume_id=volume.id, path=str(staging))


def _group_difference(staged: Capability | None, asked: Capability) -> str:
    """Say so when what differs is the mount group: the fix is another pod, not a retry."""
    before = staged.mount_group if staged is not None else ""
    if before == asked.mount_group:
        return ""
    return (
        f" (volume_mount_group {before or 'unset'} at stage, {asked.mount_group or 'unset'} "
        "now; unstage it to change the group)"
    )
