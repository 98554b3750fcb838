"""Controller-side volume work: create, delete, expand, modify, inspect, attach records."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from aiocsi import threads
from aiocsi.config import TOPOLOGY_KEY
from aiocsi.engine.context import ALIGNMENT, EngineContext, align_up, no_space_is_exhaustion
from aiocsi.engine.parameters import preallocate
from aiocsi.engine.pool import is_volume_id, new_volume_id
from aiocsi.engine.requests import CapacityRange, CreateVolume, TopologyRequirement
from aiocsi.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidToken,
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
from aiocsi.state.store import Budget, OverBudget, Store

log = get_logger("aiocsi.engine")
DEFAULT_FS = "ext4"
SECTOR = 512  # loop devices need whole sectors


def minimum_size(capabilities: tuple[Capability, ...]) -> int:
    sizes = [
        MIN_FS_SIZE.get(c.fs_type or DEFAULT_FS, ALIGNMENT)
        for c in capabilities
        if c.access_type is AccessType.MOUNT
    ]
    return max([ALIGNMENT, *sizes])


def choose_size(capacity: CapacityRange, minimum: int, default: int, floor: int = 0) -> int:
    """Pick the image size the spec allows: at least `required`, at most `limit`.

    Sizes are whole MiB when the range allows it; a tight limit falls back to the largest
    whole MiB, then the largest whole sector, that still holds what is needed.
    """
    needed = max(capacity.required_bytes, minimum, floor)
    limit = capacity.limit_bytes
    wanted = capacity.required_bytes or (min(default, limit) if limit else default)
    size = align_up(max(wanted, needed))
    if not limit or size <= limit:
        return size
    for unit in (ALIGNMENT, SECTOR):
        candidate = limit // unit * unit
        if candidate >= needed:
            return candidate
    raise OutOfRange(
        f"cannot fit a volume in limit_bytes={limit}: it needs at least {needed} bytes "
        f"(filesystem minimum {minimum}, content source {floor}), in whole {SECTOR}-byte sectors"
    )


def topology_admits(requirement: TopologyRequirement | None, node_id: str) -> bool:
    """Whether a volume on `node_id` meets `requirement`.

    Only `requisite` constrains: CSI lets the SP choose any topology when it is empty, and
    `preferred` is an ordering within it.
    """
    if requirement is None or not requirement.requisite:
        return True
    return any(
        t.get(TOPOLOGY_KEY) == node_id and set(t) <= {TOPOLOGY_KEY} for t in requirement.requisite
    )


def _compatible(existing: Volume, request: CreateVolume, params: dict[str, str]) -> str | None:
    """Why an existing volume of the same name does not satisfy `request`, or None."""
    if not request.capacity.admits(existing.capacity_bytes):
        return f"it has {existing.capacity_bytes} bytes, outside the requested range"
    if existing.source != request.source:
        return "it was created from a different content source"
    if existing.parameters != params:
        return "it was created with different parameters"
    if existing.capacity_bytes < (needed := minimum_size(request.capabilities)):
        return f"its {existing.capacity_bytes} bytes are too few for a {needed}-byte filesystem"
    return None


def is_preallocated(volume: Volume) -> bool:
    return preallocate(volume.parameters, volume.mutable_parameters)


def _pool_space_sync(ctx: EngineContext) -> tuple[int, int]:
    total, available = files.filesystem_space(ctx.pool.root)
    return int(total * ctx.config.overcommit), available


async def pool_space(ctx: EngineContext) -> tuple[int, int]:
    """The pool's provisioning budget (its size times --overcommit) and its free bytes."""
    return await threads.run_sync(_pool_space_sync, ctx)


def pool_budget(ctx: EngineContext) -> Callable[[], int]:
    """The pool's provisioning budget, to be read where it is checked (the store thread)."""
    return lambda: _pool_space_sync(ctx)[0]


def over_budget(what: str, exc: OverBudget, overcommit: float) -> ResourceExhausted:
    left = max(exc.budget - exc.provisioned, 0)
    return ResourceExhausted(
        f"the pool cannot hold {what} of {exc.wanted} bytes: {left} bytes are left to "
        f"provision ({exc.provisioned} of {exc.budget} at overcommit {overcommit})"
    )


async def check_page_token(store: Store, table: str, after_seq: int) -> None:
    """A token past every sequence number ever issued is not one this driver gave out."""
    if after_seq and after_seq > await store.last_seq(table):
        raise InvalidToken(f"starting_token {after_seq} is not one this driver issued")


class VolumeService:
    def __init__(self, ctx: EngineContext) -> None:
        self._ctx = ctx
        self._pool = ctx.pool
        self._store = ctx.store

    # -- lookups --------------------------------------------------------------------------

    async def get(self, volume_id: str) -> Volume:
        volume = self._store.get_volume(volume_id) if is_volume_id(volume_id) else None
        if volume is None or volume.state is not VolumeState.READY:
            raise NotFound(f"volume {volume_id} does not exist")
        return volume

    async def published_nodes(self, volume_id: str) -> list[str]:
        pubs = self._store.publications(volume_id)
        return sorted({p.node_id for p in pubs})

    async def condition(self, volume: Volume) -> VolumeCondition:
        image = self._pool.volume_image(volume.id)
        return await threads.run_sync(_image_condition, image, volume.capacity_bytes)

    async def list(self, after_seq: int, limit: int) -> list[Volume]:
        await check_page_token(self._store, "volumes", after_seq)
        return await self._store.list_volumes(after_seq, limit)

    # -- create / delete ------------------------------------------------------------------

    async def create(
        self, request: CreateVolume, params: dict[str, str], *, ephemeral: bool = False
    ) -> Volume:
        key = f"volume-name:{request.name}"
        return await self._ctx.operations.run(
            key,
            ("create", request),
            "CreateVolume",
            lambda: self._create(request, params, ephemeral=ephemeral),
        )

    async def _create(
        self, request: CreateVolume, params: dict[str, str], *, ephemeral: bool
    ) -> Volume:
        existing = self._store.get_volume_by_name(request.name)
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
            volume = await self._create_image_first(volume, pool_budget(self._ctx))
        else:
            budget, available = await pool_space(self._ctx)
            if preallocated and size > available:
                raise ResourceExhausted(
                    f"the pool filesystem has {available} bytes free; a preallocated volume "
                    f"of {size} bytes does not fit"
                )
            volume = await self._create_record_first(volume, budget, preallocated=preallocated)
        log.info("volume_created", volume_id=volume.id, name=volume.name, bytes=size)
        return volume

    async def _record(self, volume: Volume, budget: Budget) -> Volume:
        # The budget check and the record are one step: concurrent creates cannot together
        # promise more than the pool has.
        try:
            return await self._store.insert_volume(volume, budget=budget)
        except OverBudget as exc:
            overcommit = self._ctx.config.overcommit
            raise over_budget(f"a volume {volume.name!r}", exc, overcommit) from None

    async def _create_image_first(self, volume: Volume, budget: Budget) -> Volume:
        """A sparse image costs nothing to make or to undo: make it, then record the volume
        ready in one commit. A crash in between leaves an image without a record, which
        reconcile removes on start; the CO, never answered, asks again."""
        await self._materialise(volume, preallocated=False)
        try:
            return await self._record(dataclasses.replace(volume, state=VolumeState.READY), budget)
        except BaseException:
            await files.remove_file(self._pool.volume_image(volume.id))
            raise

    async def _create_record_first(
        self, volume: Volume, budget: Budget, *, preallocated: bool
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
        async with no_space_is_exhaustion(f"creating volume {volume.name!r}"):
            if volume.source is None:
                await files.create_sparse(image, volume.capacity_bytes, preallocate=preallocated)
                return
            try:
                method = await files.copy_image(
                    self._source_image(volume.source), image, size=volume.capacity_bytes
                )
            except FileNotFoundError:
                raise NotFound(
                    f"the image of source {volume.source.kind.value} {volume.source.id} is gone"
                ) from None
            if preallocated:
                await files.allocate(image, volume.capacity_bytes)
            log.info(
                "volume_content_copied", volume_id=volume.id, method=method, source=volume.source.id
            )

    async def delete(self, volume_id: str) -> None:
        if not is_volume_id(volume_id):
            return  # an id we never issued names no volume: already gone
        await self._ctx.operations.run(
            f"volume:{volume_id}", ("delete",), "DeleteVolume", lambda: self._delete(volume_id)
        )

    async def _delete(self, volume_id: str) -> None:
        volume = self._store.get_volume(volume_id)
        if volume is None:
            return
        users = self._store.publications(volume_id)
        if users:
            where = ", ".join(f"{p.kind.value} {p.path}" for p in users)
            raise FailedPrecondition(
                f"volume {volume_id} is still in use ({where}); unpublish it first"
            )
        if await loop.find_loop_devices(self._pool.volume_image(volume_id)):
            raise FailedPrecondition(f"volume {volume_id} is still attached to a loop device")
        await self._remove(volume)
        log.info("volume_deleted", volume_id=volume_id)

    async def _remove(self, volume: Volume) -> None:
        """Remove the image, then the record.

        A crash in between leaves a record whose image is gone: the CO, never answered,
        deletes again, and the retry finds nothing to remove but the record. (Marking the
        record "deleting" first cost a commit per delete.)
        """
        await files.remove_file(self._pool.volume_image(volume.id))
        await self._store.delete_volume(volume.id)

    # -- expand / modify ------------------------------------------------------------------

    async def expand(self, volume_id: str, capacity: CapacityRange) -> tuple[int, Volume]:
        await self.get(volume_id)
        return await self._ctx.operations.run(
            f"volume:{volume_id}",
            ("expand", capacity),
            "ControllerExpandVolume",
            lambda: self._expand_by_id(volume_id, capacity),
        )

    async def _expand_by_id(self, volume_id: str, capacity: CapacityRange) -> tuple[int, Volume]:
        return await self._expand(await self.get(volume_id), capacity)

    async def _expand(self, volume: Volume, capacity: CapacityRange) -> tuple[int, Volume]:
        """Grow the image to what `capacity` asks; the caller holds the volume's operation."""
        volume = await self.get(volume.id)  # the caller's copy may predate an earlier change
        current = volume.capacity_bytes
        if capacity.admits(current):
            # Also finishes an expansion that was recorded but not done before a crash.
            await self._ensure_image_size(volume, current)
            return current, volume
        if capacity.limit_bytes and capacity.limit_bytes < current:
            raise OutOfRange(
                f"volume {volume.id} has {current} bytes; shrinking to {capacity.limit_bytes} "
                "is not supported"
            )
        size = choose_size(capacity, ALIGNMENT, current, floor=current)
        budget, available = await pool_space(self._ctx)
        if is_preallocated(volume) and size - current > available:
            raise ResourceExhausted(
                f"the pool filesystem has {available} bytes free; growing preallocated volume "
                f"{volume.id} needs {size - current}"
            )
        try:
            # Recorded first: the record never claims less than the image holds.
            await self._store.set_volume_capacity(volume.id, size, budget=budget)
        except OverBudget as exc:
            raise over_budget(
                f"the growth of volume {volume.id}", exc, self._ctx.config.overcommit
            ) from None
        grown = dataclasses.replace(volume, capacity_bytes=size)
        try:
            await self._ensure_image_size(grown, size)
        except BaseException:
            await self._store.set_volume_capacity(volume.id, current)
            raise
        log.info("volume_expanded", volume_id=volume.id, bytes=size, previous=current)
        return size, grown

    async def _ensure_image_size(self, volume: Volume, size: int) -> None:
        async with no_space_is_exhaustion(f"expanding volume {volume.id}"):
            try:
                await files.grow_file(
                    self._pool.volume_image(volume.id), size, preallocate=is_preallocated(volume)
                )
            except FileNotFoundError:
                raise FailedPrecondition(
                    f"the image of volume {volume.id} is missing; it cannot be expanded"
                ) from None

    async def is_attached(self, volume_id: str) -> bool:
        return bool(await loop.find_loop_devices(self._pool.volume_image(volume_id)))

    async def needs_node_expansion(self, volume_id: str, capability: Capability | None) -> bool:
        """After a controller expansion: must the node grow a filesystem or a loop device?"""
        access = capability.access_type if capability is not None else None
        if access is None:
            staged = self._store.publications(volume_id, PublicationKind.STAGE)
            if any(
                p.capability is not None and p.capability.access_type is AccessType.BLOCK
                for p in staged
            ):
                access = AccessType.BLOCK
        if access is AccessType.BLOCK:
            # A raw device only needs the loop device refreshed, and only where attached.
            return await self.is_attached(volume_id)
        return True

    async def modify(self, volume_id: str, mutable: dict[str, str]) -> None:
        await self.get(volume_id)
        await self._ctx.operations.run(
            f"volume:{volume_id}",
            ("modify", tuple(sorted(mutable.items()))),
            "ControllerModifyVolume",
            lambda: self._modify(volume_id, mutable),
        )

    async def _modify(self, volume_id: str, mutable: dict[str, str]) -> None:
        volume = await self.get(volume_id)
        modified = dataclasses.replace(
            volume, mutable_parameters={**volume.mutable_parameters, **mutable}
        )
        if is_preallocated(modified):
            await self._ensure_allocated(modified)
        # Turning preallocation off only affects later growth: punching holes would
        # discard data.
        await self._store.set_mutable_parameters(volume.id, modified.mutable_parameters)
        log.info("volume_modified", volume_id=volume.id, parameters=modified.mutable_parameters)

    async def _ensure_allocated(self, volume: Volume) -> None:
        image = self._pool.volume_image(volume.id)
        try:
            held = await threads.run_sync(files.allocated_bytes, image)
        except FileNotFoundError:
            raise FailedPrecondition(f"the image of volume {volume.id} is missing") from None
        _, available = await pool_space(self._ctx)
        if volume.capacity_bytes - held > available:
            raise ResourceExhausted(
                f"the pool filesystem has {available} bytes free; preallocating volume "
                f"{volume.id} needs up to {volume.capacity_bytes - held}"
            )
        async with no_space_is_exhaustion(f"preallocating volume {volume.id}"):
            await files.allocate(image, volume.capacity_bytes)

    # -- controller publish ---------------------------------------------------------------

    async def controller_publish(
        self, volume_id: str, node_id: str, capability: Capability, read_only: bool
    ) -> None:
        await self.get(volume_id)
        if node_id != self._ctx.config.node_id:
            raise NotFound(f"node {node_id!r} is not served by this driver")
        await self._ctx.operations.run(
            f"volume:{volume_id}",
            ("publish", node_id, capability, read_only),
            "ControllerPublishVolume",
            lambda: self._controller_publish(volume_id, node_id, capability, read_only),
        )

    async def _controller_publish(
        self, volume_id: str, node_id: str, capability: Capability, read_only: bool
    ) -> None:
        volume = await self.get(volume_id)
        attached = self._store.publications(volume.id, PublicationKind.CONTROLLER)
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
            on_node = self._store.publications(kind=PublicationKind.CONTROLLER)
            if len({p.volume_id for p in on_node if p.node_id == node_id}) >= limit:
                raise ResourceExhausted(f"node {node_id} already holds {limit} volumes")
        await self._store.add_publication(
            Publication(
                volume.id, PublicationKind.CONTROLLER, node_id, node_id, read_only, capability
            )
        )
        log.info("volume_controller_published", volume_id=volume.id, node_id=node_id)

    async def controller_unpublish(self, volume_id: str, node_id: str) -> None:
        if not is_volume_id(volume_id):
            return
        await self._ctx.operations.run(
            f"volume:{volume_id}",
            ("unpublish", node_id),
            "ControllerUnpublishVolume",
            lambda: self._controller_unpublish(volume_id, node_id),
        )

    async def _controller_unpublish(self, volume_id: str, node_id: str) -> None:
        for pub in self._store.publications(volume_id, PublicationKind.CONTROLLER):
            if not node_id or pub.node_id == node_id:
                await self._store.remove_publication(
                    volume_id, PublicationKind.CONTROLLER, pub.path
                )

    # -- capacity -------------------------------------------------------------------------

    async def capacity(self, topology: dict[str, str] | None, *, preallocated: bool) -> int:
        """Bytes a new volume may still have; 0 for a topology this node is not in."""
        if topology and topology.get(TOPOLOGY_KEY) != self._ctx.config.node_id:
            return 0
        budget, available = await pool_space(self._ctx)
        left = max(budget - await self._store.provisioned_bytes(), 0)
        return min(left, available) if preallocated else left


def _image_condition(image: Path, capacity: int) -> VolumeCondition:
    try:
        size = image.stat().st_size
        with image.open("rb") as handle:
            handle.read(4096)
    except FileNotFoundError:
        return VolumeCondition(abnormal=True, message=f"image {image.name} is missing")
    except OSError as exc:
        return VolumeCondition(
            abnormal=True, message=f"image {image.name} is unreadable: {exc.strerror}"
        )
    if size < capacity:
        return VolumeCondition(
            abnormal=True, message=f"image {image.name} is truncated: {size} of {capacity} bytes"
        )
    return VolumeCondition.healthy()
