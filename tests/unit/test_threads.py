"""The worker pool behind every blocking call: results, errors, context, cancellation."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from aiocsi import threads

_tag: contextvars.ContextVar[str] = contextvars.ContextVar("tag", default="none")


async def test_results_errors_and_the_callers_context_cross_over() -> None:
    _tag.set("caller")
    assert await threads.run_sync(lambda a, b: (a + b, _tag.get()), 2, 3) == (5, "caller")
    assert await threads.run_sync(threading.current_thread) is not threading.current_thread()

    def fails() -> None:
        raise OSError(5, "boom")

    with pytest.raises(OSError, match="boom"):
        await threads.run_sync(fails)


async def test_blocking_calls_run_side_by_side() -> None:
    # Eight calls that each wait for all the others: they finish only if each has a thread.
    barrier = threading.Barrier(8, timeout=10)
    done = await asyncio.gather(*(threads.run_sync(barrier.wait) for _ in range(8)))
    assert sorted(done) == list(range(8))


async def test_a_cancelled_caller_leaves_the_work_to_finish() -> None:
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def work() -> None:
        started.set()
        release.wait(10)
        finished.set()

    waiting = asyncio.ensure_future(threads.run_sync(work))
    await asyncio.to_thread(started.wait, 10)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    assert await asyncio.to_thread(finished.wait, 10)
    # The pool still serves the next call.
    assert await threads.run_sync(lambda: "next") == "next"
