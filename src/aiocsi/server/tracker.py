"""The call tracker: counts calls in flight so a drain knows when the server is idle."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True)
class CallStatistics:
    """A snapshot of the tracker, as anyio's primitives give one."""

    active: int
    draining: bool
    # Calls answered UNAVAILABLE because a drain had begun.
    refused_draining: int


class CallTracker:
    """Counts calls in flight and refuses new ones once draining starts."""

    def __init__(self) -> None:
        self.active = 0
        self.draining = False
        self.refused_draining = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.active += 1
        self._idle.clear()

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._idle.set()

    def admit(self) -> bool:
        """False (and counted) once a drain has begun: the call is to be refused."""
        if self.draining:
            self.refused_draining += 1
            return False
        return True

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def statistics(self) -> CallStatistics:
        return CallStatistics(self.active, self.draining, self.refused_draining)
