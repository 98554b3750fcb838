"""The engine's front door: opens state, reconciles, and hands out the services."""

from __future__ import annotations

import asyncio
from collections import Counter

from aiocsi.config import Config
from aiocsi.engine.groups import GroupSnapshotService
from aiocsi.engine.health import HealthChecker
from aiocsi.engine.metadata import SnapshotMetadata
from aiocsi.engine.node import NodeVolumes
from aiocsi.engine.operations import Operations
from aiocsi.engine.pool import Pool
from aiocsi.engine.reconcile import reconcile
from aiocsi.engine.resources import EngineResources
from aiocsi.engine.snapshots import SnapshotService
from aiocsi.engine.space import SpaceWatch
from aiocsi.engine.volumes import VolumeService
from aiocsi.host.lock import PoolLock
from aiocsi.host.loop import LoopIndex
from aiocsi.state.store import DB_NAME, Store
from aiocsi.threads import WorkerPool

LOCK_NAME = "aiocsi.lock"


class Engine:
    def __init__(self, config: Config) -> None:
        pool = Pool(config.pool)
        workers = WorkerPool.for_operations(config.max_operations)
        store = Store(config.pool / DB_NAME)
        loops = LoopIndex(workers)
        self.resources = EngineResources(
            config=config,
            store=store,
            pool=pool,
            operations=Operations(config.max_operations),
            mkfs_slots=asyncio.Semaphore(config.max_mkfs),
            workers=workers,
            loops=loops,
            space=SpaceWatch(pool, store, workers, loops, config.overcommit),
        )
        self.health = HealthChecker(config, workers)
        self.volumes = VolumeService(self.resources)
        self.snapshots = SnapshotService(self.resources)
        self.groups = GroupSnapshotService(self.resources, self.snapshots)
        self.metadata = SnapshotMetadata(self.snapshots, pool, workers)
        self.node = NodeVolumes(self.resources, self.volumes, self.health)
        self._lock = PoolLock(config.pool / LOCK_NAME)
        # What the start-up reconcile repaired, by kind (read by metrics).
        self.repaired: Counter[str] = Counter()

    @property
    def operations(self) -> Operations:
        """Running operations; `operations.statistics()` for metrics."""
        return self.resources.operations

    @property
    def workers(self) -> WorkerPool:
        """The worker pool for every blocking call; `workers.statistics()` for metrics."""
        return self.resources.workers

    async def start(self) -> None:
        """Prepare and lock the pool, open state, reconcile. Raises PoolLocked."""
        await self.workers.run_sync(self.resources.pool.prepare)
        self._lock.acquire()
        await self.resources.store.open()
        self.repaired = await reconcile(self.resources)
        await self.resources.space.start()

    async def drain(self) -> None:
        await self.operations.drain()

    async def close(self) -> None:
        await self.resources.space.stop()
        await self.resources.store.close()
        self._lock.release()
        self.workers.close()
