"""CreateVolume and DeleteVolume, in the order that lets a crash at any point be finished
or undone; and the VolumeService the engine hands out."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from aiocsi.engine import policy
from aiocsi.engine.budget import PoolBudget, no_space_is_exhaustion
from aiocsi.engine.operations import OperationKey
from aiocsi.engine.parameters import preallocate
from aiocsi.engine.pool import is_volume_id, new_volume_id
from aiocsi.engine.requests import CreateVolume
from aiocsi.engine.sizing import choose_size, minimum_size, topology_admits, why_incompatible
from aiocsi.engine.volumes.attachments import ControllerAttachments
from aiocsi.engine.volumes.changes import VolumeChanges
from aiocsi.errors import AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted
from aiocsi.host import files
from aiocsi.logging import get_logger
from aiocsi.models import ContentSource, SourceKind, Volume, VolumeState
from aiocsi.state.store import OverBudget

log = get_logger("aiocsi.engine")


class VolumeService(VolumeChanges, ControllerAttachments):
    """Controller-side volume work: create, delete, expand, modify, inspect, attach records."""

    async def create(self, request: CreateVolume, *, ephemeral: bool = False) -> Volume:
        request = policy.create_request(request, self._allowed_flags)
        return await self._ctx.operations.run(
            OperationKey.volume_name(request.name),
            ("create", request),
            "CreateVolume",
            lambda: self._create(request, ephemeral=ephemeral),
        )

    async def _create(self, request: CreateVolume, *, ephemeral: bool) -> Volume:
        params = request.parameters
        existing = self._store.get_volume_by_name(request.name)
        if existing is not None and existing.state is VolumeState.READY:
            if (why := why_incompatible(existing, request, params)) is not None:
                raise AlreadyExists(f"volume {request.name!r} already exists but {why}")
            return existing
        if existing is not None:  # a crash left it half made: start over
            await self._remove(existing)
        if not topology_admits(request.topology, self._ctx.config.node_id):
            raise ResourceExhausted(
                f"this driver can only place volumes on node {self._ctx.config.node_id!r}, "
                "which the accessibility requirements exclude"
            )
        source_size = await self._source_size(request.source)
        size = choose_size(
            request.capacity,
            minimum_size(request.capabilities),
            self._ctx.config.default_volume_size,
            floor=source_size,
        )
        preallocated = preallocate(params, request.mutable_parameters)
        volume = Volume(
            id=new_volume_id(),
            name=request.name,
            capacity_bytes=size,
            state=VolumeState.CREATING,
            node_id=self._ctx.config.node_id,
            parameters=params,
            mutable_parameters=dict(request.mutable_parameters),
            source=request.source,
            ephemeral=ephemeral,
            created_at=time.time(),
        )
        if volume.source is None and not preallocated:
            volume = await self._create_image_first(volume, self._space.budget())
        else:
            budget = await self._space.measured_budget()
            if preallocated and (
                refused := budget.too_big_to_preallocate(
                    f"a preallocated volume {request.name!r}", size
                )
            ):
                raise refused
            volume = await self._create_record_first(volume, budget, preallocated=preallocated)
        log.info("volume_created", volume_id=volume.id, name=volume.name, bytes=size)
        return volume

    async def _record(self, volume: Volume, budget: PoolBudget) -> Volume:
        # The budget check and the record are one step: concurrent creates cannot together
        # promise more than the pool has.
        try:
            return await self._store.insert_volume(volume, budget=budget)
        except OverBudget as exc:
            raise budget.exhausted(f"a volume {volume.name!r}", exc) from None

    async def _create_image_first(self, volume: Volume, budget: PoolBudget) -> Volume:
        """A sparse image costs nothing to make or to undo: make it, then record the volume
        ready in one commit. A crash in between leaves an image without a record, which
        reconcile removes on start; the CO, never answered, asks again."""
        await self._materialise(volume, preallocated=False)
        try:
            return await self._record(dataclasses.replace(volume, state=VolumeState.READY), budget)
        except BaseException:
            await self._remove_image(volume.id)
            raise

    async def _create_record_first(
        self, volume: Volume, budget: PoolBudget, *, preallocated: bool
    ) -> Volume:
        """A copy or a preallocation costs time and space: the budget is claimed first (the
        record, "creating"), then the image is made, then the record is marked ready."""
        volume = await self._record(volume, budget)
        try:
            await self._materialise(volume, preallocated=preallocated)
            await self._store.set_volume_state(volume.id, VolumeState.READY)
        except BaseException:
            await self._remove(volume)
            raise
        return dataclasses.replace(volume, state=VolumeState.READY)

    async def _source_size(self, source: ContentSource | None) -> int:
        if source is None:
            return 0
        if source.kind is SourceKind.SNAPSHOT:
            snap = await self._store.get_snapshot(source.id)
            if snap is None or not snap.ready:
                raise NotFound(f"source snapshot {source.id} does not exist")
            return snap.size_bytes
        vol = self._store.get_volume(source.id)
        if vol is None or vol.state is not VolumeState.READY:
            raise NotFound(f"source volume {source.id} does not exist")
        return vol.capacity_bytes

    def _source_image(self, source: ContentSource) -> Path:
        if source.kind is SourceKind.SNAPSHOT:
            return self._pool.snapshot_image(source.id)
        return self._pool.volume_image(source.id)

    async def _materialise(self, volume: Volume, *, preallocated: bool) -> None:
        image = self._pool.volume_image(volume.id)
        with no_space_is_exhaustion(f"creating volume {volume.name!r}", self._pool.root):
            if volume.source is None:
                await files.create_sparse(
                    self._workers, image, volume.capacity_bytes, preallocate=preallocated
                )
                if preallocated:
                    await self._space.measure(image)
                return
            try:
                method = await files.copy_image(
                    self._workers,
                    self._source_image(volume.source),
                    image,
                    size=volume.capacity_bytes,
                )
            except FileNotFoundError:
                raise NotFound(
                    f"the image of source {volume.source.kind.value} {volume.source.id} is gone"
                ) from None
            if preallocated:
                await files.allocate(self._workers, image, volume.capacity_bytes)
            await self._space.measure(image)
            log.info(
                "volume_content_copied", volume_id=volume.id, method=method, source=volume.source.id
            )

    async def delete(self, volume_id: str) -> None:
        if not is_volume_id(volume_id):
            return  # an id we never issued names no volume: already gone
        await self._ctx.operations.run(
            OperationKey.volume(volume_id),
            ("delete",),
            "DeleteVolume",
            lambda: self.delete_while_held(volume_id),
        )

    async def delete_while_held(self, volume_id: str) -> None:
        """DeleteVolume's work, for a caller that already runs the volume's operation."""
        volume = self._store.get_volume(volume_id)
        if volume is None:
            return
        users = self._store.publications(volume_id)
        if users:
            where = ", ".join(f"{p.kind.value} {p.path}" for p in users)
            raise FailedPrecondition(
                f"volume {volume_id} is still in use ({where}); unpublish it first"
            )
        if self._loops.devices_for(self._pool.volume_image(volume_id)):
            raise FailedPrecondition(f"volume {volume_id} is still attached to a loop device")
        await self._remove(volume)
        log.info("volume_deleted", volume_id=volume_id)

    async def _remove(self, volume: Volume) -> None:
        """Remove the image, then the record.

        A crash in between leaves a record whose image is gone: the CO, never answered,
        deletes again, and the retry finds nothing to remove but the record. No "deleting"
        mark is needed, which saves a commit per delete.
        """
        await self._remove_image(volume.id)
        await self._store.delete_volume(volume.id)

    async def _remove_image(self, volume_id: str) -> None:
        image = self._pool.volume_image(volume_id)
        await files.remove_file(self._workers, image)
        self._space.forget(image)
