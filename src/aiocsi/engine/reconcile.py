"""Start-up reconcile: make the database, the pool, loop devices and mounts agree again.

Only our own resources are touched: images in this pool, loop devices backed by them,
and mounts of those loop devices recorded as ours.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import anyio

from aiocsi.engine.context import EngineContext
from aiocsi.engine.node import DELETED_SUFFIX
from aiocsi.engine.pool import Pool, is_snapshot_id, is_volume_id
from aiocsi.errors import CommandFailed, FailedPrecondition
from aiocsi.host import files, loop, mount
from aiocsi.logging import get_logger
from aiocsi.models import AccessType, Publication, PublicationKind, VolumeState

log = get_logger("aiocsi.engine")
_LOOP_NODE = re.compile(r"loop[0-9]+")


def _our_devices(pool: Pool, backing_files: dict[str, str]) -> dict[str, str]:
    """Map volume id -> loop device for every loop device backed by one of our images.

    An image deleted while attached still counts: its device must be released too.
    """
    found: dict[str, str] = {}
    for device, backing in backing_files.items():
        image = backing.removesuffix(DELETED_SUFFIX)
        if pool.owns_image(image) and is_volume_id(Path(image).stem):
            found.setdefault(Path(image).stem, device)
    return found


def _bound_devices(mounts: list[mount.MountEntry], devices: Collection[str]) -> dict[str, str]:
    """Mount point -> our loop device bound there as a device node (a block publication).

    Such a mount's source is the filesystem holding /dev (devtmpfs, or a tmpfs in a
    container), so the device is recognised by its number. Only mounts whose root names
    a loop device node are looked at: a stat of an unrelated (network) mount could hang.
    """
    numbers: dict[int, str] = {}
    for device in devices:
        with contextlib.suppress(OSError):
            numbers[Path(device).stat().st_rdev] = device
    bound: dict[str, str] = {}
    for entry in mounts:
        if not _LOOP_NODE.fullmatch(PurePosixPath(entry.root).name):
            continue
        try:
            info = Path(entry.mount_point).stat()
        except OSError:
            continue
        if stat.S_ISBLK(info.st_mode) and info.st_rdev in numbers:
            bound[entry.mount_point] = numbers[info.st_rdev]
    return bound


def _mount_points(pubs: list[Publication]) -> dict[str, str]:
    # mountinfo shows resolved paths; a record keeps the path it was given.
    return {pub.path: os.path.realpath(pub.path) for pub in pubs}


@dataclass(frozen=True)
class _HostView:
    """What the host shows at start: mounts by point, and block publications' devices."""

    mounts: list[mount.MountEntry]
    by_point: dict[str, list[mount.MountEntry]]
    bound: dict[str, str]

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


async def _host_view(devices: Collection[str]) -> _HostView:
    mounts = await mount.read_mounts()
    by_point: dict[str, list[mount.MountEntry]] = {}
    for entry in mounts:
        by_point.setdefault(entry.mount_point, []).append(entry)
    bound = await anyio.to_thread.run_sync(_bound_devices, mounts, devices)
    return _HostView(mounts, by_point, bound)


async def reconcile(ctx: EngineContext) -> Counter[str]:
    repaired: Counter[str] = Counter()
    devices = _our_devices(ctx.pool, await loop.loop_backing_files())
    view = await _host_view(devices.values())
    await _forget_lost_publications(ctx, view, devices, repaired)
    known_volumes, known_snapshots = await _roll_back_unfinished(ctx, repaired)
    await _detach_unused(ctx, view, devices, repaired)
    await _remove_orphans(ctx, known_volumes, known_snapshots, repaired)
    log.info("reconciled", repaired=dict(repaired), volumes=len(known_volumes),
             snapshots=len(known_snapshots))
    return repaired


async def _forget_lost_publications(
    ctx: EngineContext, view: _HostView, devices: dict[str, str], repaired: Counter[str]
) -> None:
    """Publications whose mount or device vanished (reboot, crash, a hand unmount) are
    forgotten: the CO stages and publishes again."""
    pubs = [p for p in await ctx.store.publications() if p.kind is not PublicationKind.CONTROLLER]
    points = await anyio.to_thread.run_sync(_mount_points, pubs)
    for pub in pubs:
        if view.still_mounted(pub, points[pub.path], devices.get(pub.volume_id)):
            continue
        await ctx.store.remove_publication(pub.volume_id, pub.kind, pub.path)
        repaired[f"{pub.kind.value}_forgotten"] += 1


async def _roll_back_unfinished(
    ctx: EngineContext, repaired: Counter[str]
) -> tuple[set[str], set[str]]:
    """Half-made or half-deleted volumes and snapshots are rolled back; returns the rest."""
    store, pool = ctx.store, ctx.pool
    known_volumes: set[str] = set()
    for volume in await store.all_volumes():
        if volume.state is VolumeState.READY:
            known_volumes.add(volume.id)
            continue
        await files.remove_file(pool.volume_image(volume.id))
        await store.delete_volume(volume.id)
        repaired[f"volume_{volume.state.value}_rolled_back"] += 1
    known_snapshots: set[str] = set()
    for snap in await store.all_snapshots():
        if snap.ready:
            known_snapshots.add(snap.id)
            continue
        await files.remove_file(pool.snapshot_image(snap.id))
        await store.delete_snapshot(snap.id)
        repaired["snapshot_rolled_back"] += 1
    return known_volumes, known_snapshots


async def _detach_unused(
    ctx: EngineContext, view: _HostView, devices: dict[str, str], repaired: Counter[str]
) -> None:
    """Loop devices backed by our images that nothing uses any more are detached."""
    staged = {p.volume_id for p in await ctx.store.publications(kind=PublicationKind.STAGE)}
    in_use = view.devices_in_use
    for volume_id, device in devices.items():
        if volume_id in staged or device in in_use:
            continue
        # Busy after all (held open by a process): the kernel detaches it at its last close.
        with contextlib.suppress(CommandFailed, FailedPrecondition):
            await loop.detach(device)
            repaired["loop_detached"] += 1


async def _remove_orphans(
    ctx: EngineContext, known_volumes: set[str], known_snapshots: set[str],
    repaired: Counter[str],
) -> None:
    """Image files with no record (a crash between file and record) are removed."""
    for image in await _images(ctx.pool.volumes_dir):
        if is_volume_id(image.stem) and image.stem not in known_volumes:
            await _remove_orphan(image, repaired)
    for image in await _images(ctx.pool.snapshots_dir):
        if is_snapshot_id(image.stem) and image.stem not in known_snapshots:
            await _remove_orphan(image, repaired)


async def _images(directory: Path) -> list[Path]:
    return [Path(p) async for p in anyio.Path(directory).glob("*.img")]


async def _remove_orphan(image: Path, repaired: Counter[str]) -> None:
    if await loop.find_loop_devices(image):
        return  # still attached (and so in use): leave it for an operator
    await files.remove_file(image)
    repaired["orphan_image_removed"] += 1
