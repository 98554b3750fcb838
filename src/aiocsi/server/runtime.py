"""What a scrape reads: the runtime's statistics, and a census of the pool taken off the loop.

The adapters here are the one place that knows where each number lives (the call tracker,
the operations registry, the worker pool, the store), so metrics.py renders plain data.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from aiocsi.engine.budget import PoolSpace, statvfs
from aiocsi.engine.pool import Pool
from aiocsi.host import files, sysfs
from aiocsi.metrics import (
    OperationCounts,
    PoolCensus,
    Runtime,
    StoreCounts,
    WorkerCounts,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from aiocsi.engine.core import Engine
    from aiocsi.logging import LogStream
    from aiocsi.server.tracker import CallTracker

# Counted by the database itself, in one read transaction of a connection of our own:
# a scrape never makes the event loop walk 10,000 rows, nor waits behind the store's writes.
_VOLUMES_BY_STATE = "SELECT state, COUNT(*) FROM volumes GROUP BY state"
_SNAPSHOTS_BY_STATE = (
    "SELECT CASE ready WHEN 1 THEN 'ready' ELSE 'creating' END, COUNT(*)"
    " FROM snapshots GROUP BY ready"
)
_PROVISIONED = (
    "SELECT (SELECT COALESCE(SUM(capacity_bytes), 0) FROM volumes)"
    " + (SELECT COALESCE(SUM(size_bytes), 0) FROM snapshots)"
)
# How a scrape runs blocking work: in the engine's worker threads.
RunSync = Callable[..., "Awaitable[Any]"]


def _allocated_now(image: str) -> int:
    try:
        return files.allocated_bytes(Path(image))
    except FileNotFoundError:  # deleted while attached: not an image of the pool any more
        return 0


def pool_census(
    pool: Pool, database: Path, overcommit: float, kept: tuple[int, Mapping[str, int]]
) -> PoolCensus:
    """Bytes, devices and rows of the pool (blocking: call from a worker thread).

    `kept` is the space watch's figure and its part per image (`SpaceWatch.held`): only
    an attached image can change behind the driver's back, so only those are measured
    again here. A stat of every image per scrape was 20,000 stats at 10,000 volumes and
    snapshots, 110 ms of a worker thread holding the GIL that the loop then waited for.
    """
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, isolation_level=None)
    try:
        db.execute("BEGIN")
        volumes = dict(db.execute(_VOLUMES_BY_STATE).fetchall())
        snapshots = dict(db.execute(_SNAPSHOTS_BY_STATE).fetchall())
        provisioned = int(db.execute(_PROVISIONED).fetchone()[0])
        db.execute("COMMIT")
    finally:
        db.close()
    total, used, free = statvfs(pool.root)
    attached = [
        image
        for backing in sysfs.all_loop_backing_files().values()
        if pool.owns_image(image := sysfs.attached_path(backing))
    ]
    kept_total, per_image = kept
    allocated = kept_total + sum(
        _allocated_now(image) - per_image.get(image, 0) for image in set(attached)
    )
    space = PoolSpace(total, free, provisioned, allocated, max(used - allocated, 0))
    return PoolCensus(
        total_bytes=total,
        free_bytes=free,
        provisioned_bytes=provisioned,
        allocated_bytes=allocated,
        foreign_bytes=space.foreign,
        offered_bytes=space.offer(overcommit),
        loop_devices=len(attached),
        volumes=volumes,
        snapshots=snapshots,
    )


_Counts = TypeVar("_Counts", OperationCounts, WorkerCounts, StoreCounts)


def _counts(kind: type[_Counts], statistics: object) -> _Counts:
    """`kind` filled from the runtime's frozen statistics, field by field of the same name."""
    return kind(**{f.name: getattr(statistics, f.name) for f in dataclasses.fields(kind)})


def _operations(engine: Engine) -> OperationCounts:
    return _counts(OperationCounts, engine.operations.statistics())


def _workers(engine: Engine) -> WorkerCounts:
    return _counts(WorkerCounts, engine.workers.statistics())


def _store(engine: Engine) -> StoreCounts:
    return _counts(StoreCounts, engine.resources.store.statistics())


async def take_snapshot(
    engine: Engine,
    tracker: CallTracker,
    log_stream: LogStream | None,
    run_sync: RunSync,
) -> Runtime:
    """The numbers of one scrape: counters read on the loop, the census in a worker."""
    calls = tracker.statistics()
    resources = engine.resources
    census = await run_sync(
        pool_census,
        resources.pool,
        resources.store.path,
        resources.config.overcommit,
        resources.space.held(),
    )
    census = dataclasses.replace(census, space_low=resources.space.low)
    return Runtime(
        calls_in_flight=calls.active,
        calls_refused_draining=calls.refused_draining,
        operations=_operations(engine),
        pool=census,
        workers=_workers(engine),
        store=_store(engine),
        repairs=dict(engine.repaired),
        log_lines_dropped=log_stream.statistics().dropped if log_stream is not None else None,
    )
