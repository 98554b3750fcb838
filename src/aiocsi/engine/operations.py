"""Per-key operation control (docs/architecture.md, "Operations").

Each mutating call runs as an operation keyed by what it touches. An identical retry while
the first runs joins it; a different operation on the same key is refused at once. The
work runs in a task owned by this registry, so a caller's deadline or a dropped connection
never interrupts a half-done mkfs or mount: the caller stops waiting, the task finishes.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from aiocsi.context import current_call
from aiocsi.errors import DeadlineExceeded, OperationPending
from aiocsi.logging import get_logger

T = TypeVar("T")
log = get_logger("aiocsi.engine")


class KeyKind(enum.StrEnum):
    """What an operation is keyed by: operations exclude each other only within one kind."""

    VOLUME_NAME = "volume-name"  # CreateVolume, before the volume has an id
    VOLUME = "volume"  # everything else on a volume, by id
    SNAPSHOT_NAME = "snapshot-name"  # CreateSnapshot
    SNAPSHOT = "snapshot"  # everything else on a snapshot, by id
    GROUP_SNAPSHOT_NAME = "group-snapshot-name"  # CreateVolumeGroupSnapshot
    GROUP_SNAPSHOT = "group-snapshot"  # everything else on a group snapshot, by id


@dataclass(frozen=True)
class OperationKey:
    """The one way to name what an operation touches (docs/architecture.md)."""

    kind: KeyKind
    value: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"

    @classmethod
    def volume_name(cls, name: str) -> OperationKey:
        return cls(KeyKind.VOLUME_NAME, name)

    @classmethod
    def volume(cls, volume_id: str) -> OperationKey:
        return cls(KeyKind.VOLUME, volume_id)

    @classmethod
    def snapshot_name(cls, name: str) -> OperationKey:
        return cls(KeyKind.SNAPSHOT_NAME, name)

    @classmethod
    def snapshot(cls, snapshot_id: str) -> OperationKey:
        return cls(KeyKind.SNAPSHOT, snapshot_id)

    @classmethod
    def group_snapshot_name(cls, name: str) -> OperationKey:
        return cls(KeyKind.GROUP_SNAPSHOT_NAME, name)

    @classmethod
    def group_snapshot(cls, group_id: str) -> OperationKey:
        return cls(KeyKind.GROUP_SNAPSHOT, group_id)


@dataclass(frozen=True)
class OperationStatistics:
    running: int  # operations holding one of the --max-operations slots
    queued: int  # operations waiting for a slot
    joined: int  # retries that joined the identical operation running (since start)
    refused: int  # calls refused with ABORTED: another operation held the key (since start)


@dataclass
class _Running:
    signature: Hashable
    description: str
    task: asyncio.Task[Any]
    keys: tuple[OperationKey, ...] = ()


class Operations:
    def __init__(self, max_running: int) -> None:
        self._running: dict[OperationKey, _Running] = {}
        # asyncio.Semaphore wakes waiters in FIFO order: excess operations queue fairly.
        self._slots = asyncio.Semaphore(max_running)
        self._in_slot = 0
        self._waiting = 0
        self._joined = 0
        self._refused = 0

    @property
    def active(self) -> int:
        return len({id(r) for r in self._running.values()})

    def statistics(self) -> OperationStatistics:
        return OperationStatistics(
            running=self._in_slot,
            queued=self._waiting,
            joined=self._joined,
            refused=self._refused,
        )

    async def run(
        self,
        key: OperationKey | Sequence[OperationKey],
        signature: Hashable,
        description: str,
        work: Callable[[], Awaitable[T]],
    ) -> T:
        """Run `work` as the operation for `key`, or join the identical one already running.

        Several keys (a snapshot's name and its source volume, a group and every member)
        are held together: the call is refused if any of them is held by another
        operation, and joins only the identical operation holding all of them.
        """
        keys = (key,) if isinstance(key, OperationKey) else tuple(dict.fromkeys(key))
        holders = {id(r): (k, r) for k in keys if (r := self._running.get(k)) is not None}
        if not holders:
            task = asyncio.get_running_loop().create_task(self._guarded(work))
            running = _Running(signature, description, task, keys)
            for held in keys:
                self._running[held] = running
            task.add_done_callback(lambda _: self._forget(keys, running))
        else:
            held, running = next(iter(holders.values()))
            identical = running.signature == signature and set(running.keys) == set(keys)
            if len(holders) > 1 or not identical:
                self._refused += 1
                raise OperationPending(
                    f"{running.description} is in progress on {held}; retry when it completes"
                )
            self._joined += 1
        return cast("T", await self._wait(running.task))

    async def _guarded(self, work: Callable[[], Awaitable[T]]) -> T:
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        self._in_slot += 1
        try:
            return await work()
        finally:
            self._in_slot -= 1
            self._slots.release()

    def _forget(self, keys: tuple[OperationKey, ...], running: _Running) -> None:
        for key in keys:
            if self._running.get(key) is running:
                del self._running[key]
        key = keys[0]
        if not running.task.cancelled() and (exc := running.task.exception()) is not None:
            # Keep "Task exception was never retrieved" quiet when every waiter left early.
            log.debug("operation_failed", key=str(key), error=str(exc))

    @staticmethod
    async def _wait(task: asyncio.Task[T]) -> T:
        call = current_call()
        left = call.time_left() if call is not None else None
        # shield: the caller giving up (deadline, cancel) must not cancel the shared task.
        waiting = asyncio.shield(task)
        if left is None:
            return await waiting
        # A timer of our own rather than asyncio.wait_for: no futures beyond the shield.
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            waiting.cancel()

        timer = asyncio.get_running_loop().call_later(max(left, 0), expire)
        try:
            return await waiting
        except asyncio.CancelledError:
            if expired:
                raise DeadlineExceeded(
                    "the operation is still running and will finish; retry to get its result"
                ) from None
            raise
        finally:
            timer.cancel()

    async def drain(self) -> None:
        """Wait until every running operation has finished."""
        while self._running:
            await asyncio.wait({r.task for r in self._running.values()})
