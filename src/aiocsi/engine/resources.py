"""What every part of the engine shares: config, store, pool layout, operations, limits,
the worker pool and the loop device index."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiocsi.config import Config
from aiocsi.engine.operations import Operations
from aiocsi.engine.pool import Pool
from aiocsi.errors import ResourceExhausted
from aiocsi.host.loop import LoopIndex
from aiocsi.state.store import Store
from aiocsi.threads import WorkerPool

ALIGNMENT = 1024 * 1024  # image sizes are whole MiB: every filesystem and loop device likes that


def align_up(size: int) -> int:
    return -(-size // ALIGNMENT) * ALIGNMENT


@dataclass
class EngineResources:
    config: Config
    store: Store
    pool: Pool
    operations: Operations
    mkfs_slots: asyncio.Semaphore
    workers: WorkerPool
    loops: LoopIndex


@contextmanager
def no_space_is_exhaustion(what: str) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT from the pool filesystem into RESOURCE_EXHAUSTED."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceExhausted(f"{what}: the pool filesystem is full") from exc
        raise
