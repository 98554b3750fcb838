"""Inline ephemeral volumes: made, staged and published by one NodePublishVolume, removed
by its NodeUnpublishVolume."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

from aiocsi.engine import policy
from aiocsi.engine.node.paths import Points, remove_path
from aiocsi.engine.node.publish import Publishing
from aiocsi.engine.operations import OperationKey
from aiocsi.engine.requests import CapacityRange, CreateVolume, PublishVolume
from aiocsi.engine.sizing import DEFAULT_FS
from aiocsi.errors import NotFound
from aiocsi.host import mount
from aiocsi.models import AccessType, Volume


class InlineVolumes(Publishing):
    """NodePublishVolume and NodeUnpublishVolume, for inline volumes too."""

    async def publish(self, request: PublishVolume) -> None:
        # Checked before anything is made: an inline volume would otherwise be created,
        # formatted and staged, only to be rolled back.
        size = policy.publish_request(request, self._allowed_flags)
        cap = request.capability
        if cap.access_type is AccessType.MOUNT and (cap.fs_type or size is not None):
            # An inline volume is formatted here: with the default filesystem if none is named.
            await self._require_fs_tools(cap.fs_type or DEFAULT_FS)
        target_field = (Path(request.target_path), "target_path")
        if size is not None:
            await self._publish_ephemeral(request, size, await self._real_path(*target_field))
            return
        target, staging = await self._real_paths(
            target_field, (Path(request.staging_path), "staging_target_path")
        )
        volume = self._volumes.get(request.volume_id)
        await self._ctx.operations.run(
            OperationKey.volume(volume.id),
            ("publish", request),
            "NodePublishVolume",
            lambda: self._publish(volume, request, Points(staging, target)),
        )

    async def unpublish(self, volume_id: str, target_path: str) -> None:
        try:
            volume = self._volume_or_ephemeral(volume_id)
        except NotFound:
            # An inline ephemeral volume is deleted by its unpublish: a retry finds neither
            # the volume nor the target, and that is success.
            if not await self._workers.run_sync(os.path.lexists, target_path):
                return
            raise
        real = await self._real_path(Path(target_path), "target_path")
        await self._ctx.operations.run(
            OperationKey.volume(volume.id),
            ("unpublish", target_path),
            "NodeUnpublishVolume",
            lambda: self._unpublish_volume(volume, Path(target_path), real),
        )

    async def _unpublish_volume(self, volume: Volume, target: Path, real: Path) -> None:
        await self._unpublish(volume, target, real)
        if volume.ephemeral:
            await self._remove_ephemeral(volume)

    def _volume_or_ephemeral(self, volume_id: str) -> Volume:
        return self._ephemeral_volume(volume_id) or self._volumes.get(volume_id)

    def _ephemeral_volume(self, co_volume_id: str) -> Volume | None:
        volume = self._store.get_volume_by_name(policy.EPHEMERAL_PREFIX + co_volume_id)
        return volume if volume is not None and volume.ephemeral else None

    async def _publish_ephemeral(self, request: PublishVolume, size: int, target: Path) -> None:
        volume = await self._volumes.create(
            CreateVolume(
                name=policy.EPHEMERAL_PREFIX + request.volume_id,
                capacity=CapacityRange(required_bytes=size),
                capabilities=(request.capability,),
            ),
            ephemeral=True,
        )
        # One operation for stage + publish, so that an unpublish cannot slip in between.
        await self._ctx.operations.run(
            OperationKey.volume(volume.id),
            ("publish-ephemeral", request),
            "NodePublishVolume",
            lambda: self._stage_and_publish_ephemeral(volume, request, target),
        )

    async def _stage_and_publish_ephemeral(
        self, volume: Volume, request: PublishVolume, target: Path
    ) -> None:
        staging = self._pool.ephemeral_staging(volume.id)
        try:
            real = await mount.canonical(self._workers, staging)
            await self._stage(volume, staging, real, request.capability)
            await self._publish(
                volume,
                dataclasses.replace(
                    request, volume_id=volume.id, staging_path=str(staging), volume_context={}
                ),
                Points(real, target),
            )
        except BaseException:
            # Nobody can use a volume that is published nowhere: remove it, and a retry
            # starts afresh. One that is published elsewhere stays (_unstage refuses).
            with contextlib.suppress(Exception):
                await self._remove_ephemeral(volume)
            raise

    async def _remove_ephemeral(self, volume: Volume) -> None:
        staging = self._pool.ephemeral_staging(volume.id)
        await self._unstage(volume, staging, await mount.canonical(self._workers, staging))
        await remove_path(self._workers, staging)
        await self._volumes.delete_while_held(volume.id)
