"""Blocking work (files, stats, system calls, waiting for a command) off the event loop.

A `WorkerPool` is built from the Config and owned by the engine, which hands it to the
host code it calls. A call costs one asyncio future, one queue put and one wake-up back
to the loop (docs/benchmarks.md says why not `to_thread.run_sync` or `run_in_executor`).

The work is never abandoned half-way: a caller that is cancelled stops waiting, the
thread finishes the job and its result is dropped (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple, cast

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# Threads beyond one per running operation: Probe's health check, the server's socket set-up
# and the odd call outside an operation (a sweep at start) never wait behind operations.
SPARE_WORKERS = 8

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


@dataclass(frozen=True)
class WorkerStatistics:
    limit: int  # most threads the pool may start
    threads: int  # threads started and not stopped
    busy: int  # threads running a job
    queued: int  # jobs submitted that no thread has taken yet


class WorkerPool:
    """Threads started on demand, up to `limit`, that stay for the next job until `close`."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a worker pool needs at least one thread, not {limit}")
        self._limit = limit
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._queued = 0
        self._closed = False

    @classmethod
    def for_operations(cls, max_operations: int) -> WorkerPool:
        """Sized so that every running operation may wait on one blocking call at a time."""
        return cls(max_operations + SPARE_WORKERS)

    def statistics(self) -> WorkerStatistics:
        with self._lock:
            return WorkerStatistics(
                limit=self._limit,
                threads=self._threads,
                busy=self._threads - self._idle,
                queued=self._queued,
            )

    async def run_sync(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """Run `fn(*args)` in a worker thread, with the caller's context (log fields)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[object] = loop.create_future()
        self._submit((loop, future, contextvars.copy_context(), lambda: fn(*args)))
        return cast("T", await future)

    def close(self) -> None:
        """Let every thread stop once it is idle; later calls are refused (RuntimeError)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = self._threads
        for _ in range(threads):
            self._jobs.put(None)

    def _submit(self, job: _Job) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker pool is closed")
            self._jobs.put(job)
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
            job = self._jobs.get()
            with self._lock:
                self._idle -= 1
                if job is None:
                    self._threads -= 1
                    return
                self._queued -= 1
            loop, future, context, call = job
            outcome: object = None
            error: BaseException | None = None
            try:
                outcome = context.run(call)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, who re-raises
                error = exc
            # A closed loop (RuntimeError) has nobody waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, future, outcome, error)
