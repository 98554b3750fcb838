"""Start-up reconcile: make the database, the pool, loop devices and mounts agree again.

Only our own resources are touched: images in this pool, loop devices backed by them,
and mounts of those loop devices recorded as ours.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path

from aiocsi.engine.context import EngineContext
from aiocsi.engine.pool import is_snapshot_id, is_volume_id
from aiocsi.errors import CommandFailed
from aiocsi.host import files, loop, mount
from aiocsi.logging import get_logger
from aiocsi.models import AccessType, PublicationKind, VolumeState

log = get_logger("aiocsi.engine")


async def reconcile(ctx: EngineContext) -> Counter[str]:
    repaired: Counter[str] = Counter()
    store, pool = ctx.store, ctx.pool
    mounted_sources = {m.source for m in await mount.read_mounts()}
    mounts_by_point = {m.mount_point: m for m in await mount.read_mounts()}

    # 1. Publications whose mount vanished (reboot, crash mid-way) are forgotten.
    for pub in await store.publications():
        if pub.kind is PublicationKind.CONTROLLER:
            continue
        is_block_stage = (
            pub.kind is PublicationKind.STAGE
            and pub.capability is not None
            and pub.capability.access_type is AccessType.BLOCK
        )
        if is_block_stage or pub.path in mounts_by_point:
            continue
        await store.remove_publication(pub.volume_id, pub.kind, pub.path)
        repaired[f"{pub.kind.value}_forgotten"] += 1

    # 2. Half-made or half-deleted volumes and snapshots are rolled back.
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

    # 3. Loop devices backed by our images that nothing uses any more are detached.
    staged = {p.volume_id for p in await store.publications(kind=PublicationKind.STAGE)}
    for device, backing in (await loop.loop_backing_files()).items():
        if not pool.owns_image(backing):
            continue
        volume_id = Path(backing).stem
        if volume_id in staged or device in mounted_sources:
            continue
        with contextlib.suppress(CommandFailed):
            await loop.detach(device)
            repaired["loop_detached"] += 1

    # 4. Image files with no record (a crash between file and record) are removed.
    for image in await _images(pool.volumes_dir):
        if is_volume_id(image.stem) and image.stem not in known_volumes:
            await _remove_orphan(image, repaired)
    for image in await _images(pool.snapshots_dir):
        if is_snapshot_id(image.stem) and image.stem not in known_snapshots:
            await _remove_orphan(image, repaired)

    log.info("reconciled", repaired=dict(repaired), volumes=len(known_volumes),
             snapshots=len(known_snapshots))
    return repaired


async def _images(directory: Path) -> list[Path]:
    import anyio  # noqa: PLC0415 - only needed here

    return [Path(p) async for p in anyio.Path(directory).glob("*.img")]


async def _remove_orphan(image: Path, repaired: Counter[str]) -> None:
    if await loop.find_loop_devices(image):
        return  # still attached (and so in use): leave it for an operator
    await files.remove_file(image)
    repaired["orphan_image_removed"] += 1
