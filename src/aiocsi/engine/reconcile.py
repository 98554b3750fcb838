"""Start-up reconcile: make the database, the pool, loop devices and mounts agree again.

Only our own resources are touched: images in this pool, loop devices backed by them,
read-only views stacked on those devices, and mounts of those devices recorded as ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from aiocsi.engine.groups import mounted_filesystems, thaw_all
from aiocsi.engine.pool import Pool, is_snapshot_id, is_volume_id
from aiocsi.engine.resources import EngineResources
from aiocsi.errors import FailedPrecondition, HostFailure
from aiocsi.host import files, mount, sysfs
from aiocsi.logging import get_logger
from aiocsi.models import AccessType, Publication, PublicationKind, VolumeState

log = get_logger("aiocsi.engine")
T = TypeVar("T")
# Entries walked on the loop between two yields to it.
_BATCH = 100
_IMAGE = ".img"


def _our_devices(pool: Pool, backing_files: Mapping[str, str]) -> dict[str, str]:
    """Map volume id -> loop device for every loop device backed by one of our images.

    An image deleted while attached still counts: its device must be released too.
    """
    found: dict[str, str] = {}
    for device, backing in backing_files.items():
        image = sysfs.attached_path(backing)
        if pool.owns_image(image) and is_volume_id(Path(image).stem):
            found.setdefault(Path(image).stem, device)
    return found


def _our_views(backing_files: Mapping[str, str], devices: Mapping[str, str]) -> dict[str, str]:
    """Map view -> volume device for every read-only view stacked on one of our devices.

    A loop device backed by anything else (a foreign image, a foreign loop device) is not
    ours, whatever its shape.
    """
    ours = set(devices.values())
    return {view: backing for view, backing in backing_files.items() if backing in ours}


def _mount_points(pubs: list[Publication]) -> dict[str, str]:
    # mountinfo shows resolved paths; a record keeps the path it was given.
    return {pub.path: os.path.realpath(pub.path) for pub in pubs}


@dataclass(frozen=True)
class _HostView:
    """What the host shows at start: our loop devices and views, mounts by point, block
    publications' devices, and where each publication's path resolves to.

    `devices` maps a volume id to its loop device, `views` a read-only view to the device
    below it; `bound` maps a bound node to our volume device, through the view when it is
    one.
    """

    devices: dict[str, str]
    views: dict[str, str]
    mounts: list[mount.MountEntry]
    by_point: dict[str, list[mount.MountEntry]]
    bound: dict[str, str]
    views_in_use: frozenset[str]
    points: dict[str, str]

    @property
    def devices_in_use(self) -> set[str]:
        return {m.source for m in self.mounts} | set(self.bound.values())

    def still_mounted(self, pub: Publication) -> bool:
        device = self.devices.get(pub.volume_id)
        if device is None:
            return False  # no loop device means nothing of this volume is mounted anywhere
        point = self.points[pub.path]
        is_block = pub.capability is not None and pub.capability.access_type is AccessType.BLOCK
        if is_block and pub.kind is PublicationKind.STAGE:
            return True  # a block stage is the attached device itself
        if is_block:
            return self.bound.get(point) == device
        return any(m.source == device for m in self.by_point.get(point, []))


def _scan_host(pool: Pool, pubs: list[Publication]) -> _HostView:
    """Sysfs, mountinfo and the publications' paths, read once for every volume
    (blocking: one worker-thread call, however many volumes and mounts there are)."""
    backing_files = sysfs.all_loop_backing_files()
    devices = _our_devices(pool, backing_files)
    views = _our_views(backing_files, devices)
    mounts = mount.read_mounts()
    by_point: dict[str, list[mount.MountEntry]] = {}
    for entry in mounts:
        by_point.setdefault(entry.mount_point, []).append(entry)
    nodes = sysfs.bound_loop_devices(mounts)
    ours = set(devices.values())
    bound = {point: views.get(node, node) for point, node in nodes.items()}
    bound = {point: device for point, device in bound.items() if device in ours}
    in_use = {m.source for m in mounts} | set(nodes.values())
    return _HostView(
        devices=devices,
        views=views,
        mounts=mounts,
        by_point=by_point,
        bound=bound,
        views_in_use=frozenset(in_use & views.keys()),
        points=_mount_points(pubs),
    )


async def _each(items: Iterable[T]) -> AsyncIterator[T]:
    """`items`, handing the loop back every `_BATCH` of them: a walk over 10,000 entries
    must not hold the calls the loop already serves."""
    for n, item in enumerate(items, 1):
        yield item
        if n % _BATCH == 0:
            await asyncio.sleep(0)


def _node_publications(ctx: EngineResources) -> list[Publication]:
    return [p for p in ctx.store.publications() if p.kind is not PublicationKind.CONTROLLER]


async def reconcile(ctx: EngineResources) -> Counter[str]:
    repaired: Counter[str] = Counter()
    pubs = _node_publications(ctx)
    host = await ctx.workers.run_sync(_scan_host, ctx.pool, pubs)
    await _forget_lost_publications(ctx, host, pubs, repaired)
    await _roll_back_groups(ctx, repaired)
    known_volumes, known_snapshots = await _roll_back_unfinished(ctx, repaired)
    held = await _detach_unused_views(ctx, host, repaired)
    await _detach_unused(ctx, host, held, repaired)
    await _remove_orphans(ctx, known_volumes, known_snapshots, repaired)
    log.info(
        "reconciled",
        repaired=dict(repaired),
        volumes=len(known_volumes),
        snapshots=len(known_snapshots),
    )
    return repaired


async def _forget_lost_publications(
    ctx: EngineResources, host: _HostView, pubs: list[Publication], repaired: Counter[str]
) -> None:
    """Publications whose mount or device vanished (reboot, crash, a hand unmount) are
    forgotten: the CO stages and publishes again."""
    lost = [pub async for pub in _each(pubs) if not host.still_mounted(pub)]
    # Asked for together, so that the store commits each batch in one transaction: after
    # a reboot every publication is lost, one fsync each would take many seconds.
    for start in range(0, len(lost), _BATCH):
        batch = lost[start : start + _BATCH]
        await asyncio.gather(
            *(ctx.store.remove_publication(pub.volume_id, pub.kind, pub.path) for pub in batch)
        )
        repaired.update(f"{pub.kind.value}_forgotten" for pub in batch)


async def _roll_back_groups(ctx: EngineResources, repaired: Counter[str]) -> None:
    """A group snapshot not finished (or half deleted) before a crash is rolled back
    whole; its members' filesystems may still be frozen (the kernel keeps a freeze when
    the freezer dies), so they are thawed first."""
    for group in await ctx.store.all_groups():
        if group.ready:
            continue
        points = mounted_filesystems(ctx, [m.source_volume_id for m in group.members])
        repaired["filesystem_thawed"] += await thaw_all(ctx, points)
        await ctx.store.set_group_ready(group.id, ready=False)
        for member in group.members:
            await files.remove_file(ctx.workers, ctx.pool.snapshot_image(member.id))
        await ctx.store.delete_group(group.id)
        repaired["group_snapshot_rolled_back"] += 1


async def _roll_back_unfinished(
    ctx: EngineResources, repaired: Counter[str]
) -> tuple[set[str], set[str]]:
    """Half-made or half-deleted volumes and snapshots are rolled back; returns the rest."""
    store, pool = ctx.store, ctx.pool
    known_volumes: set[str] = set()
    async for volume in _each(store.all_volumes()):
        if volume.state is VolumeState.READY:
            known_volumes.add(volume.id)
            continue
        await files.remove_file(ctx.workers, pool.volume_image(volume.id))
        await store.delete_volume(volume.id)
        repaired[f"volume_{volume.state.value}_rolled_back"] += 1
    known_snapshots: set[str] = set()
    async for snap in _each(await store.all_snapshots()):
        if snap.ready:
            known_snapshots.add(snap.id)
            continue
        await files.remove_file(ctx.workers, pool.snapshot_image(snap.id))
        await store.delete_snapshot(snap.id)
        repaired["snapshot_rolled_back"] += 1
    return known_volumes, known_snapshots


async def _detach_unused_views(
    ctx: EngineResources, host: _HostView, repaired: Counter[str]
) -> set[str]:
    """Views that nothing shows any more (their publication is gone) are detached.

    Returns the volume devices that still have a view stacked on them.
    """
    held: set[str] = set()
    for view, device in host.views.items():
        if view in host.views_in_use:
            held.add(device)
            continue
        try:
            await ctx.loops.detach(view)
        except (HostFailure, FailedPrecondition):
            # Held open by a process: the kernel detaches it at its last close.
            held.add(device)
        else:
            repaired["loop_view_detached"] += 1
    return held


async def _detach_unused(
    ctx: EngineResources, host: _HostView, held: set[str], repaired: Counter[str]
) -> None:
    """Loop devices backed by our images that nothing uses any more are detached."""
    staged = {p.volume_id for p in ctx.store.publications(kind=PublicationKind.STAGE)}
    in_use = host.devices_in_use | held
    for volume_id, device in host.devices.items():
        if volume_id in staged or device in in_use:
            continue
        # Busy after all (held open by a process): the kernel detaches it at its last close.
        with contextlib.suppress(HostFailure, FailedPrecondition):
            await ctx.loops.detach(device)
            repaired["loop_detached"] += 1


async def _remove_orphans(
    ctx: EngineResources,
    known_volumes: set[str],
    known_snapshots: set[str],
    repaired: Counter[str],
) -> None:
    """Image files with no record (a crash between file and record) are removed."""
    volumes, snapshots = await ctx.workers.run_sync(_image_stems, ctx.pool)
    orphans = [
        ctx.pool.volumes_dir / f"{stem}{_IMAGE}"
        for stem in volumes
        if is_volume_id(stem) and stem not in known_volumes
    ] + [
        ctx.pool.snapshots_dir / f"{stem}{_IMAGE}"
        for stem in snapshots
        if is_snapshot_id(stem) and stem not in known_snapshots
    ]
    for image in orphans:
        await _remove_orphan(ctx, image, repaired)


def _image_stems(pool: Pool) -> tuple[list[str], list[str]]:
    """The names (without `.img`) of the images in the volume and the snapshot directory:
    one listing each, no stat (blocking: call from a worker thread)."""

    def stems(directory: Path) -> list[str]:
        try:
            # Names only: a Path per entry would cost more than the listing.
            names = os.listdir(directory)  # noqa: PTH208
        except FileNotFoundError:
            return []
        return [name.removesuffix(_IMAGE) for name in names if name.endswith(_IMAGE)]

    return stems(pool.volumes_dir), stems(pool.snapshots_dir)


async def _remove_orphan(ctx: EngineResources, image: Path, repaired: Counter[str]) -> None:
    if ctx.loops.devices_for(image):
        return  # still attached (and so in use): leave it for an operator
    await files.remove_file(ctx.workers, image)
    repaired["orphan_image_removed"] += 1
