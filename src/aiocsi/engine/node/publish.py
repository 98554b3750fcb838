"""NodePublishVolume's and NodeUnpublishVolume's work on a staged volume: binds at the
target, read-only views of block devices."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

from aiocsi.engine.host_errors import host_step
from aiocsi.engine.node.base import access_type, is_single_writer
from aiocsi.engine.node.paths import Points, refuses_writes
from aiocsi.engine.node.stage import Staging
from aiocsi.engine.requests import PublishVolume
from aiocsi.errors import AlreadyExists, FailedPrecondition
from aiocsi.host import mount
from aiocsi.logging import get_logger
from aiocsi.models import AccessType, Capability, Publication, PublicationKind, Volume

log = get_logger("aiocsi.engine")


class Publishing(Staging):
    """Bind a staged volume at a target and release it again."""

    def _check_publish_conflicts(
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
            is_single_writer(request.capability)
            or any(is_single_writer(p.capability) for p in others)
        ):
            raise FailedPrecondition(
                f"volume {volume.id} is SINGLE_NODE_SINGLE_WRITER and may be published at one "
                f"target only; it is already published at {others[0].path}"
            )
        return same

    async def _publish(self, volume: Volume, request: PublishVolume, points: Points) -> None:
        target = Path(request.target_path)
        capability = request.capability
        self._refuse_path_of_another(volume, target)
        recorded = self._check_publish_conflicts(volume, request)
        stage = self._find(volume.id, PublicationKind.STAGE, request.staging_path)
        device = self._device(volume)
        if stage is None or device is None:
            raise FailedPrecondition(
                f"volume {volume.id} is not staged at {request.staging_path!r}; stage it first"
            )
        if stage.capability is not None and stage.capability.access_type != capability.access_type:
            raise FailedPrecondition(
                f"volume {volume.id} is staged for {stage.capability.access_type} access, "
                f"not {capability.access_type}"
            )
        _same_mount_group(volume, stage, capability)
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
            with host_step(f"publishing volume {volume.id} at {target}"):
                created = await mount.bind_mount(
                    self._workers,
                    source,
                    points.target,
                    read_only=request.read_only,
                    make_target=make,
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
        with host_step(f"attaching a read-only view of volume {volume.id}"):
            view = await self._loops.attach_view(device)
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
        if request.read_only and not await self._workers.run_sync(refuses_writes, top, target):
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

    async def _unpublish(self, volume: Volume, target: Path, real: Path) -> None:
        device = self._device(volume)
        pub = self._find(volume.id, PublicationKind.PUBLISH, str(target))
        with host_step(f"unpublishing volume {volume.id} from {target}"):
            await self._unmount_ours(real, device, remove_target=True)
        # Only a read-only block publication has a view to detach; without a record (a retry
        # after a crash), one may have been left behind.
        if device is not None and (
            pub is None or (access_type(pub) is AccessType.BLOCK and pub.read_only)
        ):
            await self._detach_unused_views(device)
        await self._store.remove_publication(volume.id, PublicationKind.PUBLISH, str(target))
        log.info("volume_unpublished", volume_id=volume.id, path=str(target))


def _same_mount_group(volume: Volume, stage: Publication, capability: Capability) -> None:
    """A publication that asks for a mount group gets the one its volume was staged with.

    The group is given to the filesystem root once, at stage: a pod with another fsGroup
    would get a volume its group cannot write, so it is refused rather than served.
    """
    if not capability.mount_group:
        return
    staged = stage.capability.mount_group if stage.capability is not None else ""
    if staged != capability.mount_group:
        raise FailedPrecondition(
            f"volume {volume.id} is staged with volume_mount_group {staged or 'unset'}, not "
            f"{capability.mount_group}; a pod with another fsGroup cannot share it (unpublish "
            "and unstage it everywhere to change the group)"
        )
