"""The worker pool behind every blocking call: results, errors, context, cancellation."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiocsi.config import Config
from aiocsi.engine.core import Engine
from aiocsi.threads import SPARE_WORKERS, WorkerPool, WorkerStatistics

_tag: contextvars.ContextVar[str] = contextvars.ContextVar("tag", default="none")


@pytest.fixture
def workers() -> Iterator[WorkerPool]:
    pool = WorkerPool(16)
    yield pool
    pool.close()


async def test_results_errors_and_the_callers_context_cross_over(workers: WorkerPool) -> None:
    _tag.set("caller")
    assert await workers.run_sync(lambda a, b: (a + b, _tag.get()), 2, 3) == (5, "caller")
    assert await workers.run_sync(threading.current_thread) is not threading.current_thread()

    def fails() -> None:
        raise OSError(5, "boom")

    with pytest.raises(OSError, match="boom"):
        await workers.run_sync(fails)


async def test_blocking_calls_run_side_by_side(workers: WorkerPool) -> None:
    # Eight calls that each wait for all the others: they finish only if each has a thread.
    barrier = threading.Barrier(8, timeout=10)
    done = await asyncio.gather(*(workers.run_sync(barrier.wait) for _ in range(8)))
    assert sorted(done) == list(range(8))


async def test_a_cancelled_caller_leaves_the_work_to_finish(workers: WorkerPool) -> None:
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def work() -> None:
        started.set()
        release.wait(10)
        finished.set()

    waiting = asyncio.ensure_future(workers.run_sync(work))
    await asyncio.to_thread(started.wait, 10)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    assert await asyncio.to_thread(finished.wait, 10)
    # The pool still serves the next call.
    assert await workers.run_sync(lambda: "next") == "next"


async def test_statistics_count_threads_busy_and_queued_jobs() -> None:
    pool = WorkerPool(2)
    assert pool.statistics() == WorkerStatistics(limit=2, threads=0, busy=0, queued=0)
    started = threading.Barrier(3, timeout=10)
    release = threading.Event()

    def hold() -> None:
        started.wait()
        release.wait(10)

    held = [asyncio.ensure_future(pool.run_sync(hold)) for _ in range(2)]
    await asyncio.to_thread(started.wait)
    third = asyncio.ensure_future(pool.run_sync(lambda: "third"))
    await asyncio.sleep(0)
    # Both threads are busy; the third job waits for one of them.
    assert pool.statistics() == WorkerStatistics(limit=2, threads=2, busy=2, queued=1)
    release.set()
    await asyncio.gather(*held)
    assert await third == "third"
    stats = pool.statistics()
    assert (stats.threads, stats.queued) == (2, 0)
    pool.close()


async def test_a_closed_pool_lets_its_threads_go_and_refuses_work() -> None:
    pool = WorkerPool(4)
    await asyncio.gather(*(pool.run_sync(lambda: None) for _ in range(4)))
    assert pool.statistics().threads >= 1
    pool.close()
    for _ in range(200):
        if pool.statistics().threads == 0:
            break
        await asyncio.sleep(0.01)
    assert pool.statistics().threads == 0
    with pytest.raises(RuntimeError, match="closed"):
        await pool.run_sync(lambda: None)


def test_the_engine_sizes_its_pool_from_the_config(tmp_path: Path) -> None:
    engine = Engine(
        Config(socket_path=tmp_path / "s", node_id="n", pool=tmp_path, max_operations=5)
    )
    assert engine.workers.statistics().limit == 5 + SPARE_WORKERS
    assert engine.operations.statistics().running == 0
    engine.workers.close()
