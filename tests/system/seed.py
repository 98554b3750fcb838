"""State for scale tests, written straight into a pool before a driver starts on it.

Creating 10,000 volumes through CreateVolume takes minutes of the suite; what a listing
or a start-up reads is the records and the image files, which this writes in seconds.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from aiocsi.engine.pool import Pool, new_snapshot_id, new_volume_id
from aiocsi.models import Snapshot, Volume, VolumeState
from aiocsi.state.store import DB_NAME, Store

if TYPE_CHECKING:
    from pathlib import Path

SEED_BYTES = 1024 * 1024
# Records written per round of the store's group commit.
_BATCH = 500


def _image(path: Path, size: int) -> None:
    with path.open("wb") as handle:
        handle.truncate(size)


async def seed_pool(
    root: Path, node_id: str, volumes: int, snapshots: int = 0
) -> tuple[list[Volume], list[Snapshot]]:
    """`volumes` ready volumes and `snapshots` ready snapshots (taken round-robin from the
    volumes), with sparse image files, in the pool at `root`; returns them as recorded."""
    pool = Pool(root)
    pool.prepare()
    store = Store(root / DB_NAME)
    await store.open()
    now = time.time()
    try:
        made_volumes: list[Volume] = []
        for start in range(0, volumes, _BATCH):
            batch = [
                Volume(
                    id=new_volume_id(),
                    name=f"seed-{i}",
                    capacity_bytes=SEED_BYTES,
                    state=VolumeState.READY,
                    node_id=node_id,
                    created_at=now,
                )
                for i in range(start, min(start + _BATCH, volumes))
            ]
            for v in batch:
                _image(pool.volume_image(v.id), SEED_BYTES)
            made_volumes += await asyncio.gather(*(store.insert_volume(v) for v in batch))
        made_snapshots: list[Snapshot] = []
        for start in range(0, snapshots, _BATCH):
            snaps = [
                Snapshot(
                    id=new_snapshot_id(),
                    name=f"seed-snap-{i}",
                    source_volume_id=made_volumes[i % len(made_volumes)].id,
                    size_bytes=SEED_BYTES,
                    ready=True,
                    created_at=now,
                )
                for i in range(start, min(start + _BATCH, snapshots))
            ]
            for s in snaps:
                _image(pool.snapshot_image(s.id), SEED_BYTES)
            made_snapshots += await asyncio.gather(*(store.insert_snapshot(s) for s in snaps))
    finally:
        await store.close()
    return made_volumes, made_snapshots
