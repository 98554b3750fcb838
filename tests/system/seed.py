"""State for scale tests, written straight into a pool before a driver starts on it.

Creating 10,000 volumes through CreateVolume takes minutes of the suite; what a listing
or a start-up reads is the records and the image files, which this writes in seconds.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from aiocsi.engine.pool import Pool, new_snapshot_id, new_volume_id
from aiocsi.host.files import create_sparse_sync
from aiocsi.models import Snapshot, Volume, VolumeState
from aiocsi.state.store import DB_NAME, Store

if TYPE_CHECKING:
    from collections.abc import Coroutine, Sequence
    from pathlib import Path

SEED_BYTES = 4 * 1024 * 1024
# Records written at once: the store commits each batch together.
_BATCH = 256


def volume_record(n: int, node_id: str, state: VolumeState = VolumeState.READY) -> Volume:
    """The n-th seeded volume (named `v-n`), not yet recorded."""
    return Volume(
        id=new_volume_id(),
        name=f"v-{n}",
        capacity_bytes=SEED_BYTES,
        state=state,
        node_id=node_id,
        created_at=time.time(),
    )


def snapshot_record(n: int, source_volume_id: str, *, ready: bool = True) -> Snapshot:
    """The n-th seeded snapshot (named `s-n`) of `source_volume_id`, not yet recorded."""
    return Snapshot(
        id=new_snapshot_id(),
        name=f"s-{n}",
        source_volume_id=source_volume_id,
        size_bytes=SEED_BYTES,
        ready=ready,
        created_at=time.time(),
    )


async def in_batches(calls: Sequence[Coroutine[Any, Any, object]]) -> list[Any]:
    """Await store calls a batch at a time; their results, in order."""
    results: list[Any] = []
    for start in range(0, len(calls), _BATCH):
        results += await asyncio.gather(*calls[start : start + _BATCH])
    return results


def images(paths: Sequence[Path]) -> None:
    """A sparse image file of SEED_BYTES at each path (blocking)."""
    for path in paths:
        create_sparse_sync(path, SEED_BYTES)


async def seed_pool(
    root: Path, node_id: str, volumes: int, snapshots: int = 0
) -> tuple[list[Volume], list[Snapshot]]:
    """`volumes` ready volumes and `snapshots` ready snapshots (taken round-robin from the
    volumes), with their image files, in the pool at `root`; returns them as recorded."""
    pool = Pool(root)
    await asyncio.to_thread(pool.prepare)
    store = Store(root / DB_NAME)
    await store.open()
    try:
        made_volumes: list[Volume] = await in_batches(
            [store.insert_volume(volume_record(n, node_id)) for n in range(volumes)]
        )
        made_snapshots: list[Snapshot] = await in_batches(
            [
                store.insert_snapshot(snapshot_record(n, made_volumes[n % volumes].id))
                for n in range(snapshots)
            ]
        )
    finally:
        await store.close()
    await asyncio.to_thread(
        images,
        [pool.volume_image(v.id) for v in made_volumes]
        + [pool.snapshot_image(s.id) for s in made_snapshots],
    )
    return made_volumes, made_snapshots
