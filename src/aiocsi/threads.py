"""Blocking work (files, stats, system calls, waiting for a command) off the event loop.

One pool of worker threads for the whole process. anyio's `to_thread.run_sync` cost two
extra trips through the event loop per call (a checkpoint and a limiter acquisition)
before the thread even started, and `run_in_executor` builds a `concurrent.futures.Future`
(with a lock and a condition variable) per call; a node lifecycle makes a dozen such
calls, and under churn that bookkeeping was a measurable share of the loop's time. Here a
call costs one asyncio future, one queue put and one wake-up back to the loop.

The work is never abandoned half-way: a caller that is cancelled stops waiting, the
thread finishes the job and its result is dropped (DESIGN.md section 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple, cast

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# Every running operation may wait on one blocking call, plus Probe's and the store's own.
MAX_WORKERS = 72

# (loop, future, context, call): where the caller waits, with what, and the work.
_Job = tuple[
    asyncio.AbstractEventLoop, "asyncio.Future[object]", contextvars.Context, "Callable[[], object]"
]


def settle(future: asyncio.Future[T], outcome: T, error: BaseException | None) -> None:
    """Complete `future` from another thread's outcome, on the loop; a future whose waiter
    was cancelled meanwhile is left alone."""
    if future.done():
        return
    if error is None:
        future.set_result(outcome)
    else:
        future.set_exception(error)


class _Workers:
    """Threads started on demand, up to `limit`, that stay for the next job."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._queued = 0

    def submit(self, job: _Job) -> None:
        self._jobs.put(job)
        with self._lock:
            self._queued += 1
            # Each queued job needs an idle thread; start one when none is left for it.
            start = self._queued > self._idle and self._threads < self._limit
            if start:
                self._threads += 1
        if start:
            threading.Thread(
                target=self._work, name=f"aiocsi-worker-{self._threads}", daemon=True
            ).start()

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            loop, future, context, call = self._jobs.get()
            with self._lock:
                self._idle -= 1
                self._queued -= 1
            outcome: object = None
            error: BaseException | None = None
            try:
                outcome = context.run(call)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, who re-raises
                error = exc
            # A closed loop (RuntimeError) has nobody waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, future, outcome, error)


_workers = _Workers(MAX_WORKERS)


async def run_sync(fn: Callable[[*Ts], T], *args: *Ts) -> T:
    """Run `fn(*args)` in a worker thread, with the caller's context (log fields)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[object] = loop.create_future()
    _workers.submit((loop, future, contextvars.copy_context(), lambda: fn(*args)))
    return cast("T", await future)
