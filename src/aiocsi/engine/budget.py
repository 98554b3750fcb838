"""The pool's provisioning budget (its size times --overcommit) and a full pool as
RESOURCE_EXHAUSTED."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from aiocsi.engine.resources import EngineResources
from aiocsi.errors import ResourceExhausted
from aiocsi.host import files
from aiocsi.state.store import OverBudget


def pool_space_sync(ctx: EngineResources) -> tuple[int, int]:
    total, available = files.filesystem_space(ctx.pool.root)
    return int(total * ctx.config.overcommit), available


async def pool_space(ctx: EngineResources) -> tuple[int, int]:
    """The pool's provisioning budget (its size times --overcommit) and its free bytes."""
    return await ctx.workers.run_sync(pool_space_sync, ctx)


def pool_budget(ctx: EngineResources) -> Callable[[], int]:
    """The pool's provisioning budget, to be read where it is checked (the store thread)."""
    return lambda: pool_space_sync(ctx)[0]


def over_budget(what: str, exc: OverBudget, overcommit: float) -> ResourceExhausted:
    left = max(exc.budget - exc.provisioned, 0)
    return ResourceExhausted(
        f"the pool cannot hold {what} of {exc.wanted} bytes: {left} bytes are left to "
        f"provision ({exc.provisioned} of {exc.budget} at overcommit {overcommit})"
    )


@contextmanager
def no_space_is_exhaustion(what: str) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT from the pool filesystem into RESOURCE_EXHAUSTED."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceExhausted(f"{what}: the pool filesystem is full") from exc
        raise
