"""Group snapshots: crash-consistent snapshots of several volumes taken together.

Members whose filesystem is mounted here (staged or published with a filesystem) are
frozen together (FIFREEZE), each image is captured the way CreateSnapshot captures one
(a reflink where the pool filesystem has it, a sparse copy otherwise), then every frozen
filesystem is thawed: always, also when a capture fails or the call is cancelled.
Unmounted and raw block members are captured as they are: a block device's writer is not
ours to pause, so such a member is only as consistent as its writer makes it.

The group and its members are recorded (not ready) before anything is frozen, and marked
ready in one transaction once every image is captured and every filesystem thawed. A
crash in between leaves an unready group, which the start-up reconcile thaws and rolls
back whole (engine/reconcile.py): there is never a partial group.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from aiocsi.engine.budget import no_space_is_exhaustion
from aiocsi.engine.operations import OperationKey
from aiocsi.engine.parameters import SNAPSHOT_PARAMETERS, normalise
from aiocsi.engine.pool import is_group_snapshot_id, new_group_snapshot_id, new_snapshot_id
from aiocsi.errors import AlreadyExists, HostFailure, InvalidArgument, NotFound
from aiocsi.host import freeze
from aiocsi.logging import get_logger
from aiocsi.models import (
    AccessType,
    GroupSnapshot,
    PublicationKind,
    Snapshot,
    Volume,
    VolumeState,
)
from aiocsi.state.store import OverBudget

if TYPE_CHECKING:
    from aiocsi.engine.requests import CreateGroupSnapshot
    from aiocsi.engine.resources import EngineResources
    from aiocsi.engine.snapshots import SnapshotService

T = TypeVar("T")
log = get_logger("aiocsi.engine")


async def uncancellable(work: Awaitable[T]) -> T:
    """Run `work` to its end even if the caller is cancelled meanwhile; the cancellation
    is raised once it has finished (a thaw skipped by a cancel would hang every writer)."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result


def mounted_filesystems(ctx: EngineResources, volume_ids: list[str]) -> dict[str, str]:
    """Volume id -> one mount point of its filesystem, for members mounted here."""
    points: dict[str, str] = {}
    for volume_id in volume_ids:
        for kind in (PublicationKind.STAGE, PublicationKind.PUBLISH):
            for pub in ctx.store.publications(volume_id, kind):
                cap = pub.capability
                if cap is not None and cap.access_type is AccessType.MOUNT:
                    points.setdefault(volume_id, pub.path)
    return points


async def thaw_all(ctx: EngineResources, points: dict[str, str]) -> int:
    """Thaw each volume's filesystem at its mount point; a failure is logged and the
    rest still thawed. Returns how many were frozen."""
    thawed = 0
    for volume_id, point in points.items():
        devices = ctx.loops.devices_for(ctx.pool.volume_image(volume_id))
        try:
            thawed += await ctx.workers.run_sync(freeze.thaw_sync, point, devices)
        except HostFailure as exc:
            log.warning("thaw_failed", volume_id=volume_id, path=point, error=str(exc))
    return thawed


def _check_members(group: GroupSnapshot, snapshot_ids: list[str]) -> None:
    """The spec's "snapshot list mismatch": the ids a CO names must be the group's."""
    held = sorted(m.id for m in group.members)
    if snapshot_ids and sorted(snapshot_ids) != held:
        raise InvalidArgument(
            f"snapshot_ids do not match the members of group snapshot {group.id}: "
            f"it holds {', '.join(held)}"
        )


class GroupSnapshotService:
    def __init__(self, ctx: EngineResources, snapshots: SnapshotService) -> None:
        self._ctx = ctx
        self._store = ctx.store
        self._snapshots = snapshots
        # The seam each member is captured through (a test injects a failure here).
        self.capture: Callable[[str, str], Awaitable[str]] = snapshots.capture

    async def get(self, group_id: str, snapshot_ids: list[str]) -> GroupSnapshot:
        group = await self._store.get_group(group_id) if is_group_snapshot_id(group_id) else None
        if group is None or not group.ready:
            raise NotFound(f"group snapshot {group_id} does not exist")
        _check_members(group, snapshot_ids)
        return group

    async def create(self, request: CreateGroupSnapshot) -> GroupSnapshot:
        normalise(request.parameters, SNAPSHOT_PARAMETERS, "parameters")
        name = request.name
        sources = tuple(sorted(request.source_volume_ids))
        keys = [OperationKey.group_snapshot_name(name), *map(OperationKey.volume, sources)]
        return await self._ctx.operations.run(
            keys,
            ("create", name, sources),
            "CreateVolumeGroupSnapshot",
            lambda: self._create(name, sources),
        )

    async def _create(self, name: str, sources: tuple[str, ...]) -> GroupSnapshot:
        existing = await self._store.get_group_by_name(name)
        if existing is not None and existing.ready:
            taken = tuple(sorted(m.source_volume_id for m in existing.members))
            if taken != sources:
                raise AlreadyExists(
                    f"group snapshot {name!r} already exists for volumes {', '.join(taken)}"
                )
            return existing
        if existing is not None:  # half made before a crash: start over
            await self._remove(existing)
        volumes = [self._source(volume_id) for volume_id in sources]
        group = await self._record(name, volumes)
        try:
            with no_space_is_exhaustion(f"creating group snapshot {name!r}", self._ctx.pool.root):
                methods = await self._capture(group)
            for member in group.members:
                await self._ctx.space.measure(self._ctx.pool.snapshot_image(member.id))
            await self._store.set_group_ready(group.id)
        except BaseException:
            await uncancellable(self._remove(group))
            raise
        log.info(
            "group_snapshot_created",
            group_snapshot_id=group.id,
            members={m.source_volume_id: m.id for m in group.members},
            methods=methods,
        )
        members = tuple(dataclasses.replace(m, ready=True) for m in group.members)
        return dataclasses.replace(group, ready=True, members=members)

    def _source(self, volume_id: str) -> Volume:
        volume = self._store.get_volume(volume_id)
        if volume is None or volume.state is not VolumeState.READY:
            raise NotFound(f"source volume {volume_id} does not exist")
        return volume

    async def _record(self, name: str, volumes: list[Volume]) -> GroupSnapshot:
        group_id = new_group_snapshot_id()
        now = time.time()
        members = tuple(
            Snapshot(
                id=new_snapshot_id(),
                # Snapshot names are unique; a member's is its group's id and its source.
                name=f"{group_id}/{v.id}",
                source_volume_id=v.id,
                size_bytes=v.capacity_bytes,
                ready=False,
                created_at=now,
                group_snapshot_id=group_id,
            )
            for v in volumes
        )
        budget = await self._ctx.space.measured_budget()
        try:
            return await self._store.insert_group(
                GroupSnapshot(id=group_id, name=name, ready=False, created_at=now, members=members),
                budget=budget.value,
            )
        except OverBudget as exc:
            raise budget.exhausted(f"a group snapshot {name!r}", exc) from None

    async def _capture(self, group: GroupSnapshot) -> dict[str, str]:
        """Freeze the mounted members, capture every member, thaw: returns each source's
        capture method."""
        points = mounted_filesystems(self._ctx, [m.source_volume_id for m in group.members])
        frozen = await uncancellable(self._freeze_all(points))
        try:
            methods: dict[str, str] = {}
            for member in group.members:
                methods[member.source_volume_id] = await self.capture(
                    member.source_volume_id, member.id
                )
            return methods
        finally:
            await uncancellable(thaw_all(self._ctx, frozen))

    async def _freeze_all(self, points: dict[str, str]) -> dict[str, str]:
        """Freeze each filesystem; if one cannot be, thaw those frozen and raise."""
        frozen: dict[str, str] = {}
        try:
            for volume_id, point in points.items():
                devices = self._ctx.loops.devices_for(self._ctx.pool.volume_image(volume_id))
                await self._ctx.workers.run_sync(freeze.freeze_sync, point, devices)
                frozen[volume_id] = point
        except BaseException:
            await thaw_all(self._ctx, frozen)
            raise
        log.info("group_members_frozen", volumes=list(frozen))
        return frozen

    async def delete(self, group_id: str, snapshot_ids: list[str]) -> None:
        if not is_group_snapshot_id(group_id):
            return
        await self._ctx.operations.run(
            OperationKey.group_snapshot(group_id),
            ("delete", tuple(sorted(snapshot_ids))),
            "DeleteVolumeGroupSnapshot",
            lambda: self._delete(group_id, snapshot_ids),
        )

    async def _delete(self, group_id: str, snapshot_ids: list[str]) -> None:
        group = await self._store.get_group(group_id)
        if group is None:
            return
        _check_members(group, snapshot_ids)
        await self._remove(group)

    async def _remove(self, group: GroupSnapshot) -> None:
        """Unmark, remove every member's image, then the records: a crash in between is
        finished by the start-up reconcile."""
        await self._store.set_group_ready(group.id, ready=False)
        for member in group.members:
            await self._snapshots.remove_image(member.id)
        await self._store.delete_group(group.id)
