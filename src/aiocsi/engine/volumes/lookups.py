"""What the controller asks about volumes without changing them: records, conditions,
pages, capacity, what an existing volume can serve."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from aiocsi.config import TOPOLOGY_KEY
from aiocsi.engine import policy
from aiocsi.engine.paging import Page, read_page
from aiocsi.engine.parameters import MUTABLE_PARAMETERS, VOLUME_PARAMETERS, normalise, preallocate
from aiocsi.engine.pool import is_volume_id
from aiocsi.engine.resources import EngineResources
from aiocsi.engine.sizing import minimum_size
from aiocsi.errors import InvalidArgument, NotFound
from aiocsi.models import (
    AccessType,
    Capability,
    PublicationKind,
    Volume,
    VolumeCondition,
    VolumeState,
)


def is_preallocated(volume: Volume) -> bool:
    return preallocate(volume.parameters, volume.mutable_parameters)


class VolumeLookups:
    """Reads of volume records and images."""

    def __init__(self, ctx: EngineResources) -> None:
        self._ctx = ctx
        self._pool = ctx.pool
        self._store = ctx.store
        self._workers = ctx.workers
        self._loops = ctx.loops
        self._space = ctx.space
        self._allowed_flags = ctx.config.allowed_mount_flags

    def get(self, volume_id: str) -> Volume:
        volume = self._store.get_volume(volume_id) if is_volume_id(volume_id) else None
        if volume is None or volume.state is not VolumeState.READY:
            raise NotFound(f"volume {volume_id} does not exist")
        return volume

    def published_nodes(self, volume_id: str) -> list[str]:
        pubs = self._store.publications(volume_id)
        return sorted({p.node_id for p in pubs})

    async def condition(self, volume: Volume) -> VolumeCondition:
        (found,) = await self.conditions([volume])
        return found

    async def conditions(self, volumes: Sequence[Volume]) -> list[VolumeCondition]:
        """The condition of each volume, in order: one worker hand-off for all of them
        (a ListVolumes page asks for a hundred at once)."""
        images = [(v, self._pool.volume_image(v.id)) for v in volumes]
        asked = [(v, image, self._space.writers(v, image)) for v, image in images]
        return await self._workers.run_sync(self._conditions_sync, asked)

    def _conditions_sync(
        self, asked: list[tuple[Volume, Path, list[str] | None]]
    ) -> list[VolumeCondition]:
        return [self._condition_sync(volume, image, devices) for volume, image, devices in asked]

    def _condition_sync(
        self, volume: Volume, image: Path, devices: list[str] | None
    ) -> VolumeCondition:
        found = image_condition(image, volume.capacity_bytes)
        return found if found.abnormal else self._space.condition_sync(volume, image, devices)

    async def list(self, after_seq: int, limit: int) -> Page[Volume]:
        return await read_page(self._store, "volumes", after_seq, limit, self._store.list_volumes)

    def is_attached(self, volume_id: str) -> bool:
        return bool(self._loops.devices_for(self._pool.volume_image(volume_id)))

    def needs_node_expansion(self, volume_id: str, capability: Capability | None) -> bool:
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
            return self.is_attached(volume_id)
        return True

    async def capacity(
        self,
        topology: dict[str, str] | None,
        capabilities: tuple[Capability, ...],
        parameters: dict[str, str],
    ) -> tuple[int, int]:
        """(bytes a new volume may still have, the least it may have) for a volume with
        `capabilities` and `parameters`; none for a topology this node is not in."""
        if capabilities:
            policy.capabilities(capabilities, "volume_capabilities", self._allowed_flags)
        preallocated = preallocate(normalise(parameters, VOLUME_PARAMETERS, "parameters"))
        minimum = minimum_size(capabilities)
        if topology and topology.get(TOPOLOGY_KEY) != self._ctx.config.node_id:
            return 0, minimum
        budget = await self._space.measured_budget()
        offered = budget.offer(await self._store.provisioned_bytes(), preallocated=preallocated)
        return offered, minimum

    def why_unsupported(
        self,
        volume: Volume,
        capabilities: tuple[Capability, ...],
        parameters: dict[str, str],
        mutable_parameters: dict[str, str],
    ) -> str | None:
        """Why `volume` cannot serve these capabilities and parameters, or None."""
        try:
            policy.capabilities(capabilities, "volume_capabilities", self._allowed_flags)
            params = normalise(parameters, VOLUME_PARAMETERS, "parameters")
            normalise(mutable_parameters, MUTABLE_PARAMETERS, "mutable_parameters")
        except InvalidArgument as exc:
            return str(exc)
        if parameters and params != volume.parameters:
            return f"volume {volume.id} was created with other parameters: {volume.parameters}"
        if volume.capacity_bytes < (needed := minimum_size(capabilities)):
            return (
                f"volume {volume.id} has {volume.capacity_bytes} bytes; the requested "
                f"filesystem needs at least {needed}"
            )
        return None


def image_condition(image: Path, capacity: int) -> VolumeCondition:
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
