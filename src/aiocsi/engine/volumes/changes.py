"""ControllerExpandVolume and ControllerModifyVolume: growing an image, reserving its
blocks."""

from __future__ import annotations

import dataclasses

from aiocsi.engine import policy
from aiocsi.engine.budget import no_space_is_exhaustion
from aiocsi.engine.operations import OperationKey
from aiocsi.engine.parameters import MUTABLE_PARAMETERS, normalise
from aiocsi.engine.requests import CapacityRange
from aiocsi.engine.sizing import ALIGNMENT, choose_size
from aiocsi.engine.volumes.lookups import VolumeLookups, is_preallocated
from aiocsi.errors import FailedPrecondition, OutOfRange
from aiocsi.host import files
from aiocsi.logging import get_logger
from aiocsi.models import Capability, Volume
from aiocsi.state.store import OverBudget

log = get_logger("aiocsi.engine")


class VolumeChanges(VolumeLookups):
    """Expand and modify volumes."""

    async def expand(
        self, volume_id: str, capacity: CapacityRange, capability: Capability | None = None
    ) -> tuple[int, Volume]:
        """ControllerExpandVolume; `capability`, if given, only has to name a filesystem this
        driver makes (its flags matter at the node)."""
        if capability is not None:
            policy.filesystem(capability, "volume_capability")
        self.get(volume_id)
        return await self._ctx.operations.run(
            OperationKey.volume(volume_id),
            ("expand", capacity),
            "ControllerExpandVolume",
            lambda: self._expand_by_id(volume_id, capacity),
        )

    async def _expand_by_id(self, volume_id: str, capacity: CapacityRange) -> tuple[int, Volume]:
        return await self.expand_while_held(self.get(volume_id), capacity)

    async def expand_while_held(
        self, volume: Volume, capacity: CapacityRange
    ) -> tuple[int, Volume]:
        """Grow the image to what `capacity` asks, for a caller that already runs the
        volume's operation (ControllerExpandVolume, or a node-only expansion)."""
        volume = self.get(volume.id)  # the caller's copy may predate an earlier change
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
        budget = await self._space.measured_budget()
        if is_preallocated(volume) and (
            refused := budget.too_big_to_preallocate(
                f"growing preallocated volume {volume.id}", size - current
            )
        ):
            raise refused
        try:
            # Recorded first: the record never claims less than the image holds.
            await self._store.set_volume_capacity(volume.id, size, budget=budget.value)
        except OverBudget as exc:
            raise budget.exhausted(f"the growth of volume {volume.id}", exc) from None
        grown = dataclasses.replace(volume, capacity_bytes=size)
        try:
            await self._ensure_image_size(grown, size)
        except BaseException:
            await self._store.set_volume_capacity(volume.id, current)
            raise
        log.info("volume_expanded", volume_id=volume.id, bytes=size, previous=current)
        return size, grown

    async def _ensure_image_size(self, volume: Volume, size: int) -> None:
        with no_space_is_exhaustion(f"expanding volume {volume.id}", self._pool.root):
            try:
                await files.grow_file(
                    self._workers,
                    self._pool.volume_image(volume.id),
                    size,
                    preallocate=is_preallocated(volume),
                )
            except FileNotFoundError:
                raise FailedPrecondition(
                    f"the image of volume {volume.id} is missing; it cannot be expanded"
                ) from None

    async def modify(self, volume_id: str, mutable: dict[str, str]) -> None:
        mutable = normalise(mutable, MUTABLE_PARAMETERS, "mutable_parameters")
        self.get(volume_id)
        await self._ctx.operations.run(
            OperationKey.volume(volume_id),
            ("modify", tuple(sorted(mutable.items()))),
            "ControllerModifyVolume",
            lambda: self._modify(volume_id, mutable),
        )

    async def _modify(self, volume_id: str, mutable: dict[str, str]) -> None:
        volume = self.get(volume_id)
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
            held = await self._workers.run_sync(files.allocated_bytes, image)
        except FileNotFoundError:
            raise FailedPrecondition(f"the image of volume {volume.id} is missing") from None
        budget = await self._space.measured_budget()
        if refused := budget.too_big_to_preallocate(
            f"preallocating volume {volume.id}", volume.capacity_bytes - held
        ):
            raise refused
        with no_space_is_exhaustion(f"preallocating volume {volume.id}", self._pool.root):
            await files.allocate(self._workers, image, volume.capacity_bytes)
        await self._space.measure(image)
