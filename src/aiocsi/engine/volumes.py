"""Controller-side volume work: create, delete, expand, modify, inspect, attach records."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import anyio

from aiocsi.config import TOPOLOGY_KEY
from aiocsi.engine.context import ALIGNMENT, EngineContext, align_up, no_space_is_exhaustion
from aiocsi.engine.parameters import preallocate
from aiocsi.engine.pool import is_volume_id, new_volume_id
from aiocsi.engine.requests import CapacityRange, CreateVolume, TopologyRequirement
from aiocsi.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    OutOfRange,
    ResourceExhausted,
)
from aiocsi.host import files, loop
from aiocsi.host.fs import MIN_FS_SIZE
from aiocsi.logging import get_logger
from aiocsi.models import (
    AccessType,
    Capability,
    ContentSource,
    Publication,
    PublicationKind,
    SourceKind,
    Volume,
    VolumeCondition,
    VolumeState,
)

log = get_logger("aiocsi.engine")
DEFAULT_FS = "ext4"


def minimum_size(capabilities: tuple[Capability, ...]) -> int:
    sizes = [
        MIN_FS_SIZE.get(c.fs_type or DEFAULT_FS, ALIGNMENT)
        for c in capabilities
        if c.access_type is AccessType.MOUNT
    ]
    return max([ALIGNMENT, *sizes])


def choose_size(capacity: CapacityRange, minimum: int, default: int, floor: int = 0) -> int:
    """Pick the image size the spec allows: at least `required`, at most `limit`, aligned."""
    wanted = capacity.required_bytes or (
        min(default, capacity.limit_bytes) if capacity.limit_bytes else default
    )
    size = align_up(max(wanted, minimum, floor))
    limit = capacity.limit_bytes
    if limit and size > limit:
        # Alignment may overshoot a tight limit; the exact limit is fine when it is big enough.
        if max(minimum, floor, capacity.required_bytes) <= limit and limit % 512 == 0:
            return limit
        raise OutOfRange(
            f"cannot fit a volume in limit_bytes={limit}: it needs at least "
            f"{max(minimum, floor, capacity.required_bytes)} bytes "
            f"(filesystem minimum {minimum}, source size {floor})"
        )
    return size


def topology_admits(requirement: TopologyRequirement | None, node_id: str) -> bool:
    if requirement is None:
        return True
    candidates = requirement.requisite or requirement.preferred
    if not candidates:
        return True
    return any(t.get(TOPOLOGY_KEY) == node_id and set(t) <= {TOPOLOGY_KEY} for t in candidates)


def _compatible(existing: Volume, request: CreateVolume, params: dict[str, str]) -> str | None:
    """Why an existing volume of the same name does not satisfy `request`, or None."""
    if not request.capacity.admits(existing.capacity_bytes):
        return f"it has {existing.capacity_bytes} bytes, outside the requested range"
    if existing.source != request.source:
        return "it was created from a different content source"
    if existing.parameters != params:
        return "it was created with different parameters"
    return None


class VolumeService:
    def __init__(self, ctx: EngineContext) -> None:
        self._ctx = ctx
        self._pool = ctx.pool
        self._store = ctx.store

    # -- lookups --------------------------------------------------------------------------

    async def get(self, volume_id: str) -> Volume:
        volume = await self._store.get_volume(volume_id) if is_volume_id(volume_id) else None
        if volume is None or volume.state is not VolumeState.READY:
            raise NotFound(f"volume {volume_id} does not exist")
        return volume

    async def published_nodes(self, volume_id: str) -> list[str]:
        pubs = await self._store.publications(volume_id)
        return sorted({p.node_id for p in pubs})

    async def condition(self, volume: Volume) -> VolumeCondition:
        image = self._pool.volume_image(volume.id)
        return await anyio.to_thread.run_sync(_image_condition, image, volume.capacity_bytes)

    async def list(self, after_seq: int, limit: int) -> list[Volume]:
        return await self._store.list_volumes(after_seq, limit)

    # -- create / delete ------------------------------------------------------------------

    async def create(
        self, request: CreateVolume, params: dict[str, str], *, ephemeral: bool = False
    ) -> Volume:
        key = f"volume-name:{request.name}"
        return await self._ctx.operations.run(
            key, ("create", request), "CreateVolume",
            lambda: self._create(request, params, ephemeral=ephemeral),
        )

    async def _create(
        self, request: CreateVolume, params: dict[str, str], *, ephemeral: bool
    ) -> Volume:
        existing = await self._store.get_volume_by_name(request.name)
        if existing is not None and existing.state is VolumeState.READY:
            if (why := _compatible(existing, request, params)) is not None:
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
            request.capacity, minimum_size(request.capabilities),
            self._ctx.config.default_volume_size, floor=source_size,
        )
        await self._check_room(size, preallocate(params))
        volume = await self._store.insert_volume(
            Volume(
                id=new_volume_id(), name=request.name, capacity_bytes=size,
                state=VolumeState.CREATING, node_id=self._ctx.config.node_id,
                parameters=params, mutable_parameters=dict(request.mutable_parameters),
                source=request.source, ephemeral=ephemeral, created_at=time.time(),
            )
        )
        try:
            await self._materialise(volume, preallocate(params) or preallocate(request.mutable_parameters))
            await self._store.set_volume_state(volume.id, VolumeState.READY)
        except BaseException:
            await self._remove(volume)
            raise
        log.info("volume_created", volume_id=volume.id, name=volume.name, bytes=size)
        return dataclasses.replace(volume, state=VolumeState.READY)

    async def _source_size(self, source: ContentSource | None) -> int:
        if source is None:
            return 0
        if source.kind is SourceKind.SNAPSHOT:
            snap = await self._store.get_snapshot(source.id)
            if snap is None or not snap.ready:
                raise NotFound(f"source snapshot {source.id} does not exist")
            return snap.size_bytes
        vol = await self._store.get_volume(source.id)
        if vol is None or vol.state is not VolumeState.READY:
            raise NotFound(f"source volume {source.id} does not exist")
        return vol.capacity_bytes

    def _source_image(self, source: ContentSource) -> Path:
        if source.kind is SourceKind.SNAPSHOT:
            return self._pool.snapshot_image(source.id)
        return self._pool.volume_image(source.id)

    async def _check_room(self, size: int, preallocated: bool) -> None:
        total, available = await anyio.to_thread.run_sync(files.filesystem_space, self._pool.root)
        provisioned = await self._store.provisioned_bytes()
        budget = int(total * self._ctx.config.overcommit) - provisioned
        if size > budget or (preallocated and size > available):
            raise ResourceExhausted(
                f"the pool cannot hold another {size} bytes "
                f"({max(budget, 0)} bytes left under overcommit {self._ctx.config.overcommit}, "
                f"{available} bytes free on disk)"
            )

    async def _materialise(self, volume: Volume, preallocated: bool) -> None:
        image = self._pool.volume_image(volume.id)
        async with no_space_is_exhaustion(f"creating volume {volume.name!r}"):
            if volume.source is None:
                await files.create_sparse(image, volume.capacity_bytes, preallocate=preallocated)
                return
            method = await files.copy_image(
                self._source_image(volume.source), image, size=volume.capacity_bytes
            )
            if preallocated:
                await files.grow_file(image, volume.capacity_bytes, preallocate=True)
            log.info("volume_content_copied", volume_id=volume.id, method=method,
                     source=volume.source.id)

    async def delete(self, volume_id: str) -> None:
        if not is_volume_id(volume_id):
            return  # an id we never issued names no volume: already gone
        await self._ctx.operations.run(
            f"volume:{volume_id}", ("delete",), "DeleteVolume", lambda: self._delete(volume_id)
        )

    async def _delete(self, volume_id: str) -> None:
        volume = await self._store.get_volume(volume_id)
        if volume is None:
            return
        users = [p for p in await self._store.publications(volume_id)]
        if users:
            where = ", ".join(f"{p.kind.value} {p.path}" for p in users)
            raise FailedPrecondition(f"volume {volume_id} is still in use ({where}); unpublish it first")
        if await loop.find_loop_devices(self._pool.volume_image(volume_id)):
            raise FailedPrecondition(f"volume {volume_id} is still attached to a loop device")
        await self._remove(volume)
        log.info("volume_deleted", volume_id=volume_id)

    async def _remove(self, volume: Volume) -> None:
        """Mark, remove the image, then the record: a crash in between is finished on start."""
        await self._store.set_volume_state(volume.id, VolumeState.DELETING)
        await files.remove_file(self._pool.volume_image(volume.id))
        await self._store.delete_volume(volume.id)

    # -- expand / modify ------------------------------------------------------------------

    async def expand(self, volume_id: str, capacity: CapacityRange) -> tuple[int, Volume]:
        volume = await self.get(volume_id)
        return await self._ctx.operations.run(
            f"volume:{volume_id}", ("expand", capacity), "ControllerExpandVolume",
            lambda: self._expand(volume, capacity),
        )

    async def _expand(self, volume: Volume, capacity: CapacityRange) -> tuple[int, Volume]:
        current = volume.capacity_bytes
        if capacity.admits(current):
            return current, volume
        if capacity.limit_bytes and capacity.limit_bytes < current:
            raise OutOfRange(
                f"volume {volume.id} has {current} bytes; shrinking to {capacity.limit_bytes} "
                "is not supported"
            )
        size = choose_size(capacity, ALIGNMENT, current, floor=current)
        await self._check_room(size - current, preallocate(volume.mutable_parameters))
        async with no_space_is_exhaustion(f"expanding volume {volume.id}"):
            await files.grow_file(
                self._pool.volume_image(volume.id), size,
                preallocate=preallocate(volume.mutable_parameters) or preallocate(volume.parameters),
            )
        await self._store.set_volume_capacity(volume.id, size)
        log.info("volume_expanded", volume_id=volume.id, bytes=size, previous=current)
        return size, dataclasses.replace(volume, capacity_bytes=size)

    async def is_attached(self, volume_id: str) -> bool:
        return bool(await loop.find_loop_devices(self._pool.volume_image(volume_id)))

    async def modify(self, volume_id: str, mutable: dict[str, str]) -> None:
        volume = await self.get(volume_id)
        await self._ctx.operations.run(
            f"volume:{volume_id}", ("modify", tuple(sorted(mutable.items()))),
            "ControllerModifyVolume", lambda: self._modify(volume, mutable),
        )

    async def _modify(self, volume: Volume, mutable: dict[str, str]) -> None:
        merged = {**volume.mutable_parameters, **mutable}
        if preallocate(merged) and not preallocate(volume.mutable_parameters):
            await self._check_room(0, preallocated=False)
            async with no_space_is_exhaustion(f"preallocating volume {volume.id}"):
                await files.grow_file(
                    self._pool.volume_image(volume.id), volume.capacity_bytes, preallocate=True
                )
        await self._store.set_mutable_parameters(volume.id, merged)
        log.info("volume_modified", volume_id=volume.id, parameters=merged)

    # -- controller publish ---------------------------------------------------------------

    async def controller_publish(
        self, volume_id: str, node_id: str, capability: Capability, read_only: bool
    ) -> None:
        volume = await self.get(volume_id)
        if node_id != self._ctx.config.node_id:
            raise NotFound(f"node {node_id!r} is not served by this driver")
        await self._ctx.operations.run(
            f"volume:{volume_id}", ("publish", node_id, capability, read_only),
            "ControllerPublishVolume",
            lambda: self._controller_publish(volume, node_id, capability, read_only),
        )

    async def _controller_publish(
        self, volume: Volume, node_id: str, capability: Capability, read_only: bool
    ) -> None:
        attached = await self._store.publications(volume.id, PublicationKind.CONTROLLER)
        for pub in attached:
            if pub.node_id != node_id:
                raise FailedPrecondition(
                    f"volume {volume.id} is single-node and already published to {pub.node_id}"
                )
            if pub.capability != capability or pub.read_only != read_only:
                raise AlreadyExists(
                    f"volume {volume.id} is already published to {node_id} with a different "
                    "capability or read-only flag"
                )
            return
        limit = self._ctx.config.max_volumes_per_node
        if limit:
            on_node = await self._store.publications(kind=PublicationKind.CONTROLLER)
            if len({p.volume_id for p in on_node if p.node_id == node_id}) >= limit:
                raise ResourceExhausted(f"node {node_id} already holds {limit} volumes")
        await self._store.add_publication(
            Publication(volume.id, PublicationKind.CONTROLLER, node_id, node_id, read_only, capability)
        )

    async def controller_unpublish(self, volume_id: str, node_id: str) -> None:
        if not is_volume_id(volume_id):
            return
        await self._ctx.operations.run(
            f"volume:{volume_id}", ("unpublish", node_id), "ControllerUnpublishVolume",
            lambda: self._controller_unpublish(volume_id, node_id),
        )

    async def _controller_unpublish(self, volume_id: str, node_id: str) -> None:
        for pub in await self._store.publications(volume_id, PublicationKind.CONTROLLER):
            if not node_id or pub.node_id == node_id:
                await self._store.remove_publication(volume_id, PublicationKind.CONTROLLER, pub.path)

    # -- capacity -------------------------------------------------------------------------

    async def capacity(self, topology: dict[str, str] | None) -> int:
        if topology is not None and topology.get(TOPOLOGY_KEY) != self._ctx.config.node_id:
            return 0
        total, _ = await anyio.to_thread.run_sync(files.filesystem_space, self._pool.root)
        provisioned = await self._store.provisioned_bytes()
        return max(int(total * self._ctx.config.overcommit) - provisioned, 0)


def _image_condition(image: Path, capacity: int) -> VolumeCondition:
    try:
        size = image.stat().st_size
        with image.open("rb") as handle:
            handle.read(4096)
    except FileNotFoundError:
        return VolumeCondition(abnormal=True, message=f"image {image.name} is missing")
    except OSError as exc:
        return VolumeCondition(abnormal=True, message=f"image {image.name} is unreadable: {exc.strerror}")
    if size < capacity:
        return VolumeCondition(
            abnormal=True, message=f"image {image.name} is truncated: {size} of {capacity} bytes"
        )
    return VolumeCondition.healthy()
