"""What every part of the engine shares: config, store, pool layout, operations, limits,
the worker pool, the loop device index and the space watch."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiocsi.config import Config
from aiocsi.engine.operations import Operations
from aiocsi.engine.pool import Pool
from aiocsi.engine.space import SpaceWatch
from aiocsi.host.loop import LoopIndex
from aiocsi.state.store import Store
from aiocsi.threads import WorkerPool


@dataclass
class EngineResources:
    config: Config
    store: Store
    pool: Pool
    operations: Operations
    mkfs_slots: asyncio.Semaphore
    workers: WorkerPool
    loops: LoopIndex
    space: SpaceWatch
