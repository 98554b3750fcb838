"""Start-up reconcile: make the database, the pool, loop devices and mounts agree again.

Only our own resources are touched: images in this pool, loop devices backed by them,
read-only views stacked on those devices, and mounts of those devices recorded as ours.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio

from aiocsi.engine.groups import mounted_filesystems, thaw_all
from aiocsi.engine.pool import Pool, is_snapshot_id, is_volume_id
from aiocsi.engine.resources import EngineResources
from aiocsi.errors import FailedPrecondition, HostFailure
from aiocsi.host import files, mount, sysfs
from aiocsi.logging import get_logger
from aiocsi.models import AccessType, Publication, PublicationKind, VolumeState

log = get_logger("aiocsi.engine")


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
    """What the host shows at start: mounts by point, and block publications' devices.

    `bound` maps a bound node to our volume device, through the view when it is one.
    """

    mounts: list[mount.MountEntry]
    by_point: dict[str, list[mount.MountEntry]]
    bound: dict[str, str]
    views_in_use: frozenset[str]

    @property
    def devices_in_use(self) -> set[str]:
        return {m.source for m in self.mounts} | set(self.bound.values())

    def still_mounted(self, pub: Publication, point: str, device: str | None) -> bool:
        if device is None:
            return False  # no loop device means nothing of this volume is mounted anywhere
        is_block = pub.capability is not None and pub.capability.access_type is AccessType.BLOCK
        if is_block and pub.kind is PublicationKind.STAGE:
            return True  # a block stage is the attached device itself
        if is_block:
            return self.bound.get(point) == device
        return any(m.source == device for m in self.by_point.get(point, []))


async def _host_view(
    ctx: EngineResources, devices: Mapping[str, str], views: Mapping[str, str]
) -> _HostView:
    mounts = mount.read_mounts()
    by_point: dict[str, list[mount.MountEntry]] = {}
    for entry in mounts:
        by_point.setdefault(entry.mount_point, []).append(entry)
    nodes = await ctx.workers.run_sync(sysfs.bound_loop_devices, mounts)
    ours = set(devices.values())
    bound = {point: views.get(node, node) for point, node in nodes.items()}
    bound = {point: device for point, device in bound.items() if device in ours}
    in_use = {m.source for m in mounts} | set(nodes.values())
    return _HostView(mounts, by_point, bound, frozenset(in_use & views.keys()))


async def reconcile(ctx: EngineResources) -> Counter[str]:
    repaired: Counter[str] = Counter()
    backing_files = sysfs.all_loop_backing_files()
    devices = _our_devices(ctx.pool, backing_files)
    views = _our_views(backing_files, devices)
    host = await _host_view(ctx, devices, views)
    await _forget_lost_publications(ctx, host, devices, repaired)
    await _roll_back_groups(ctx, repaired)
    known_volumes, known_snapshots = await _roll_back_unfinished(ctx, repaired)
    held = await _detach_unused_views(ctx, host, views, repaired)
    await _detach_unused(ctx, host, devices, held, repaired)
    await _remove_orphans(ctx, known_volumes, known_snapshots, repaired)
    log.info(
        "reconciled",
        repaired=dict(repaired),
        volumes=len(known_volumes),
        snapshots=len(known_snapshots),
    )
    return repaired


async def _forget_lost_publications(
    ctx: EngineResources, host: _HostView, devices: dict[str, str], repaired: Counter[str]
) -> None:
    """Publications whose mount or device vanished (reboot, crash, a hand unmount) are
    forgotten: the CO stages and publishes again."""
    pubs = [p for p in ctx.store.publications() if p.kind is not PublicationKind.CONTROLLER]
    points = await ctx.workers.run_sync(_mount_points, pubs)
    for pub in pubs:
        if host.still_mounted(pub, points[pub.path], devices.get(pub.volume_id)):
            continue
        await ctx.store.remove_publication(pub.volume_id, pub.kind, pub.path)
        repaired[f"{pub.kind.value}_forgotten"] += 1


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
    for volume in store.all_volumes():
        if volume.state is VolumeState.READY:
            known_volumes.add(volume.id)
            continue
        await files.remove_file(ctx.workers, pool.volume_image(volume.id))
        await store.delete_volume(volume.id)
        repaired[f"volume_{volume.state.value}_rolled_back"] += 1
    known_snapshots: set[str] = set()
    for snap in await store.all_snapshots():
        if snap.ready:
            known_snapshots.add(snap.id)
            continue
        await files.remove_file(ctx.workers, pool.snapshot_image(snap.id))
        await store.delete_snapshot(snap.id)
        repaired["snapshot_rolled_back"] += 1
    return known_volumes, known_snapshots


async def _detach_unused_views(
    ctx: EngineResources, host: _HostView, views: dict[str, str], repaired: Counter[str]
) -> set[str]:
    """Views that nothing shows any more (their publication is gone) are detached.

    Returns the volume devices that still have a view stacked on them.
    """
    held: set[str] = set()
    for view, device in views.items():
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
    ctx: EngineResources,
    host: _HostView,
    devices: dict[str, str],
    held: set[str],
    repaired: Counter[str],
) -> None:
    """Loop devices backed by our images that nothing uses any more are detached."""
    staged = {p.volume_id for p in ctx.store.publications(kind=PublicationKind.STAGE)}
    in_use = host.devices_in_use | held
    for volume_id, device in devices.items():
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
    for image in await _images(ctx.pool.volumes_dir):
        if is_volume_id(image.stem) and image.stem not in known_volumes:
            await _remove_orphan(ctx, image, repaired)
    for image in await _images(ctx.pool.snapshots_dir):
        if is_snapshot_id(image.stem) and image.stem not in known_snapshots:
            await _remove_orphan(ctx, image, repaired)


async def _images(directory: Path) -> list[Path]:
    return [Path(p) async for p in anyio.Path(directory).glob("*.img")]


async def _remove_orphan(ctx: EngineResources, image: Path, repaired: Counter[str]) -> None:
    if ctx.loops.devices_for(image):
        return  # still attached (and so in use): leave it for an operator
    await files.remove_file(ctx.workers, image)
    repaired["orphan_image_removed"] += 1
