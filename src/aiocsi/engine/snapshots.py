"""Snapshots: point-in-time copies of a volume's image (reflink when the pool allows)."""

from __future__ import annotations

import dataclasses
import time

from aiocsi.engine.budget import no_space_is_exhaustion
from aiocsi.engine.operations import OperationKey
from aiocsi.engine.paging import Page, read_page
from aiocsi.engine.parameters import SNAPSHOT_PARAMETERS, normalise
from aiocsi.engine.pool import is_snapshot_id, new_snapshot_id
from aiocsi.engine.resources import EngineResources
from aiocsi.errors import AlreadyExists, FailedPrecondition, NotFound
from aiocsi.host import files
from aiocsi.logging import get_logger
from aiocsi.models import Snapshot, VolumeState
from aiocsi.state.store import OverBudget

log = get_logger("aiocsi.engine")


class SnapshotService:
    def __init__(self, ctx: EngineResources) -> None:
        self._ctx = ctx
        self._store = ctx.store
        self._pool = ctx.pool
        self._workers = ctx.workers
        self._space = ctx.space

    async def get(self, snapshot_id: str) -> Snapshot:
        snap = await self._store.get_snapshot(snapshot_id) if is_snapshot_id(snapshot_id) else None
        if snap is None or not snap.ready:
            raise NotFound(f"snapshot {snapshot_id} does not exist")
        return snap

    async def create(
        self, name: str, source_volume_id: str, parameters: dict[str, str] | None = None
    ) -> Snapshot:
        normalise(parameters or {}, SNAPSHOT_PARAMETERS, "parameters")
        # The source's key too: an expansion meanwhile would leave the snapshot recording
        # a size other than the one captured; a group taking the source must not overlap.
        return await self._ctx.operations.run(
            (OperationKey.snapshot_name(name), OperationKey.volume(source_volume_id)),
            ("create", name, source_volume_id),
            "CreateSnapshot",
            lambda: self._create(name, source_volume_id),
        )

    async def _create(self, name: str, source_volume_id: str) -> Snapshot:
        existing = await self._store.get_snapshot_by_name(name)
        if existing is not None and existing.ready:
            if existing.source_volume_id != source_volume_id:
                raise AlreadyExists(
                    f"snapshot {name!r} already exists for volume {existing.source_volume_id}"
                )
            return existing
        if existing is not None and existing.group_snapshot_id:
            raise AlreadyExists(
                f"snapshot {name!r} is a member of group snapshot {existing.group_snapshot_id}"
            )
        if existing is not None:  # half made before a crash: start over
            await self.remove(existing.id)
        source = self._store.get_volume(source_volume_id)
        if source is None or source.state is not VolumeState.READY:
            raise NotFound(f"source volume {source_volume_id} does not exist")
        budget = await self._space.measured_budget()
        try:
            # A snapshot is a full-size (sparse) image: it counts against the pool.
            snap = await self._store.insert_snapshot(
                Snapshot(
                    id=new_snapshot_id(),
                    name=name,
                    source_volume_id=source_volume_id,
                    size_bytes=source.capacity_bytes,
                    ready=False,
                    created_at=time.time(),
                ),
                budget=budget.value,
            )
        except OverBudget as exc:
            raise budget.exhausted(f"a snapshot {name!r}", exc) from None
        try:
            with no_space_is_exhaustion(f"creating snapshot {name!r}", self._pool.root):
                method = await self.capture(source_volume_id, snap.id)
            await self._space.measure(self._pool.snapshot_image(snap.id))
            await self._store.set_snapshot_ready(snap.id)
        except BaseException:
            await self.remove(snap.id)
            raise
        log.info("snapshot_created", snapshot_id=snap.id, volume_id=source_volume_id, method=method)
        return dataclasses.replace(snap, ready=True)

    async def capture(self, volume_id: str, snapshot_id: str) -> str:
        """Copy a volume's image as it is now into a snapshot's image (a reflink where the
        pool filesystem has it, a sparse copy otherwise); returns which. Also the seam a
        group snapshot captures each member through."""
        try:
            return await files.copy_image(
                self._workers,
                self._pool.volume_image(volume_id),
                self._pool.snapshot_image(snapshot_id),
            )
        except FileNotFoundError:
            raise NotFound(f"the image of source volume {volume_id} is gone") from None

    async def delete(self, snapshot_id: str) -> None:
        if not is_snapshot_id(snapshot_id):
            return
        await self._ctx.operations.run(
            OperationKey.snapshot(snapshot_id),
            ("delete",),
            "DeleteSnapshot",
            lambda: self._delete(snapshot_id),
        )

    async def _delete(self, snapshot_id: str) -> None:
        snap = await self._store.get_snapshot(snapshot_id)
        if snap is not None and snap.group_snapshot_id:
            # The spec: a member that reports its group_snapshot_id MUST NOT be deleted
            # alone; DeleteVolumeGroupSnapshot removes it with its group.
            raise FailedPrecondition(
                f"snapshot {snapshot_id} is a member of group snapshot "
                f"{snap.group_snapshot_id}; delete the group (DeleteVolumeGroupSnapshot)"
            )
        await self.remove(snapshot_id)

    async def remove(self, snapshot_id: str) -> None:
        """Unmark, remove the image, then the record: a crash in between is finished on start."""
        await self._store.set_snapshot_ready(snapshot_id, ready=False)
        await self.remove_image(snapshot_id)
        await self._store.delete_snapshot(snapshot_id)

    async def remove_image(self, snapshot_id: str) -> None:
        """Remove a snapshot's image file (if any) and stop counting what it held."""
        await files.remove_file(self._workers, self._pool.snapshot_image(snapshot_id))
        self._space.forget(self._pool.snapshot_image(snapshot_id))

    async def list(
        self, after_seq: int, limit: int, *, source_volume_id: str = "", snapshot_id: str = ""
    ) -> Page[Snapshot]:
        async def fetch(after: int, n: int) -> list[Snapshot]:
            return await self._store.list_snapshots(
                after, n, source_volume_id=source_volume_id, snapshot_id=snapshot_id
            )

        return await read_page(self._store, "snapshots", after_seq, limit, fetch)
