"""The event loop's lag: how late it wakes a task that asked to sleep."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

# A wake-up this late means Probe and every other call wait as long: the loop is unhealthy.
MAX_HEALTHY_LAG = 1.0
INTERVAL = 0.1


class LoopLagWatch:
    """A watchdog task that sleeps `interval` at a time and measures how late it wakes."""

    def __init__(
        self, observe: Callable[[float], None] | None = None, interval: float = INTERVAL
    ) -> None:
        self._observe = observe
        self._interval = interval
        self._last = 0.0
        self._due: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="aiocsi-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def current(self) -> float:
        """The last lag measured, or longer if the next wake-up is already overdue."""
        if self._due is None:
            return 0.0
        overdue = asyncio.get_running_loop().time() - self._due
        return max(self._last, overdue, 0.0)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._due = loop.time() + self._interval
            await asyncio.sleep(self._interval)
            self._last = max(loop.time() - self._due, 0.0)
            if self._observe is not None:
                self._observe(self._last)
