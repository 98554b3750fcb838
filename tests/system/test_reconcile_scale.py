"""Reconcile of a big pool: every repair still made, exactly, and the loop never stalled.

The pool is seeded straight through the store and the pool's layout (thousands of
CreateVolume calls would take minutes): ready volumes and snapshots with their images,
stage publications a reboot lost, half-made volumes and snapshots, and images with no
record. A driver then starts on it under the loop watchdog (`running_driver`), which
fails the test if reconcile held the loop for more than 50 ms.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from aiocsi._proto.csi import v1 as csi
from aiocsi.engine.pool import Pool, new_snapshot_id, new_volume_id
from aiocsi.models import Publication, PublicationKind, VolumeState
from aiocsi.state.store import DB_NAME, Store

from .conftest import driver_config, unwatched_driver
from .seed import images, in_batches, snapshot_record, volume_record
from .test_reconcile import started

pytestmark = pytest.mark.system

VOLUMES, SNAPSHOTS, LOST_STAGES = 3000, 2000, 3000
CREATING, UNREADY_SNAPSHOTS, ORPHANS = 40, 30, 60


async def seed(root: Path) -> dict[str, set[str]]:
    """A stopped pool as a crash after a reboot leaves it; returns the ids that must stay."""
    pool = Pool(root / "pool")
    await asyncio.to_thread(pool.prepare)
    store = Store(pool.root / DB_NAME)
    await store.open()
    ready = [volume_record(n, "test-node") for n in range(VOLUMES)]
    creating = [
        volume_record(VOLUMES + n, "test-node", VolumeState.CREATING) for n in range(CREATING)
    ]
    snaps = [snapshot_record(n, ready[n % VOLUMES].id) for n in range(SNAPSHOTS)]
    unready = [
        snapshot_record(SNAPSHOTS + n, ready[n].id, ready=False) for n in range(UNREADY_SNAPSHOTS)
    ]
    try:
        await in_batches([store.insert_volume(v) for v in ready + creating])
        await in_batches([store.insert_snapshot(s) for s in snaps + unready])
        await in_batches(
            [
                store.add_publication(
                    Publication(
                        ready[n].id,
                        PublicationKind.STAGE,
                        str(root / "staging" / str(n)),
                        "test-node",
                    )
                )
                for n in range(LOST_STAGES)
            ]
        )
    finally:
        await store.close()
    orphan_volumes = [new_volume_id() for _ in range(ORPHANS)]
    orphan_snapshots = [new_snapshot_id() for _ in range(ORPHANS)]
    # Not an image of the kind its directory holds: not ours to judge, left alone.
    misplaced = pool.volumes_dir / f"{new_snapshot_id()}.img"
    await asyncio.to_thread(
        images,
        [pool.volumes_dir / f"{v.id}.img" for v in ready + creating]
        + [pool.volumes_dir / f"{v}.img" for v in orphan_volumes]
        + [pool.snapshots_dir / f"{s.id}.img" for s in snaps + unready]
        + [pool.snapshots_dir / f"{s}.img" for s in orphan_snapshots]
        + [misplaced],
    )
    return {
        "volumes": {v.id for v in ready},
        "snapshots": {s.id for s in snaps},
        "volume_files": {*(v.id for v in ready), misplaced.stem},
    }


async def listed(page: Callable[[str], Awaitable[tuple[list[str], str]]]) -> set[str]:
    """Every id a listing returns, its pages followed to the end."""
    found: set[str] = set()
    token = ""
    while True:
        ids, token = await page(token)
        found.update(ids)
        if not token:
            return found


async def test_a_big_pool_is_reconciled_exactly_without_a_stall(cleanup: Path) -> None:
    kept = await seed(cleanup)
    # Watched from start to stop: only the reconcile (and the start around it) runs.
    async with started(cleanup) as (driver, event):
        assert event["volumes"] == VOLUMES
        assert event["snapshots"] == SNAPSHOTS
        assert event["repaired"] == {
            "stage_forgotten": LOST_STAGES,
            "volume_creating_rolled_back": CREATING,
            "snapshot_rolled_back": UNREADY_SNAPSHOTS,
            "orphan_image_removed": 2 * ORPHANS,
        }
        assert driver.server.engine.resources.store.publications() == []
    pool = Pool(cleanup / "pool")
    assert {p.stem for p in pool.volumes_dir.iterdir()} == kept["volume_files"]
    assert {p.stem for p in pool.snapshots_dir.iterdir()} == kept["snapshots"]
    # Listing thousands is not what this test watches the loop for.
    async with unwatched_driver(driver_config(cleanup), cleanup) as again:
        controller = again.client.controller

        async def volumes(token: str) -> tuple[list[str], str]:
            reply = await controller.list_volumes(csi.ListVolumesRequest(starting_token=token))
            return [e.volume.volume_id for e in reply.entries if e.volume], reply.next_token

        async def snapshots(token: str) -> tuple[list[str], str]:
            reply = await controller.list_snapshots(csi.ListSnapshotsRequest(starting_token=token))
            return [e.snapshot.snapshot_id for e in reply.entries if e.snapshot], reply.next_token

        assert await listed(volumes) == kept["volumes"]
        assert await listed(snapshots) == kept["snapshots"]
