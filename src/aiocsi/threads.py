"""Blocking work (files, stats, system calls, waiting for a command) off the event loop.

One pool of worker threads for the whole process, reached through the loop's own
`run_in_executor`. anyio's `to_thread.run_sync` costs two extra trips through the event
loop per call (a checkpoint and a limiter acquisition) before the thread even starts, and a
node lifecycle makes a dozen such calls; under churn those trips were a measurable share
of the loop's time and of each call's latency. The pool's size is the limit anyio's
limiter gave.

The work is never abandoned half-way: a caller that is cancelled stops waiting, the
thread finishes the job (DESIGN.md section 3).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# Every running operation may wait on one blocking call, plus Probe's and the store's own.
MAX_WORKERS = 72

_pool = ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="aiocsi-worker")


async def run_sync(fn: Callable[[*Ts], T], *args: *Ts) -> T:
    """Run `fn(*args)` in a worker thread, with the caller's context (log fields)."""
    context = contextvars.copy_context()
    call = functools.partial(context.run, fn, *args)
    future = asyncio.get_running_loop().run_in_executor(_pool, call)
    return await asyncio.shield(future)
