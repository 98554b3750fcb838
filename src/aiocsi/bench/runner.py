"""Running units of work: timing, the count/duration budget, workers, and the set of
lifecycles whose resources still exist (so that everything is released at the end).
"""

from __future__ import annotations

import abc
import itertools
import math
import time
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import anyio

from aiocsi.bench.stats import RunRecorder

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiocsi.bench.stats import Samples

T = TypeVar("T")
S = TypeVar("S")
CANCELLED = "CANCELLED"
# How often the loop-lag monitor wakes up: often enough to see a stall of a few ms.
_LAG_INTERVAL_S = 0.01
# Releasing many volumes at once would only queue inside the driver.
_RELEASE_CONCURRENCY = 8


class Progress(Protocol):
    def phase(self, label: str, total: int | None) -> None: ...

    def advance(self, *, ok: bool) -> None: ...


async def measure(
    samples: Samples, call: Callable[[], Awaitable[T]], code_of: Callable[[BaseException], str]
) -> T:
    """Await `call` and record its latency (perf_counter around the await) or its error code.

    Cancellation is recorded as CANCELLED and propagates.
    """
    started = time.perf_counter()
    try:
        result = await call()
    except BaseException as exc:
        samples.failed(
            CANCELLED if isinstance(exc, anyio.get_cancelled_exc_class()) else code_of(exc)
        )
        raise
    samples.ok(time.perf_counter() - started)
    return result


async def run_unit(
    samples: Samples,
    call: Callable[[], Awaitable[object]],
    code_of: Callable[[BaseException], str],
) -> bool:
    """Like `measure` for a whole unit whose failure is a result, not an exception."""
    try:
        await measure(samples, call, code_of)
    except Exception:  # noqa: BLE001 - recorded by code; the run goes on
        return False
    return True


class Budget:
    """Hands out unit numbers until `count` units were handed out or `duration` has passed."""

    def __init__(self, count: int | None, duration: float | None) -> None:
        self._count = count if count is not None else math.inf
        self._deadline = time.monotonic() + duration if duration is not None else math.inf
        self._taken = 0

    @property
    def total(self) -> int | None:
        return None if math.isinf(self._count) else int(self._count)

    def take(self) -> int | None:
        if self._taken >= self._count or time.monotonic() >= self._deadline:
            return None
        self._taken += 1
        return self._taken - 1


async def run_workers(
    concurrency: int, budget: Budget, unit: Callable[[], Awaitable[bool]], progress: Progress
) -> None:
    """Keep `concurrency` units in flight until the budget runs out."""

    async def worker() -> None:
        while budget.take() is not None:
            progress.advance(ok=await unit())

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)


class LoopLag:
    """Measures this process's own event loop: a stalled client would inflate every latency."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    async def run(self) -> None:
        while True:
            started = time.perf_counter()
            await anyio.sleep(_LAG_INTERVAL_S)
            self.samples.append(max(0.0, time.perf_counter() - started - _LAG_INTERVAL_S))


class Lifecycles(abc.ABC, Generic[S]):
    """Runs lifecycles and remembers each one whose resources may still exist.

    A lifecycle that fails is released at once; one that is cancelled stays in the set
    until `release_all` at the end of the run.
    """

    kind: str
    unit = "lifecycles"

    def __init__(self) -> None:
        self._seq = itertools.count()
        self._live: dict[int, tuple[S, RunRecorder]] = {}

    @property
    @abc.abstractmethod
    def steps(self) -> tuple[str, ...]: ...

    @abc.abstractmethod
    def code_of(self, exc: BaseException) -> str: ...

    @abc.abstractmethod
    def _new(self, seq: int) -> S: ...

    @abc.abstractmethod
    async def _steps(self, slot: S, rec: RunRecorder) -> None: ...

    @abc.abstractmethod
    async def _release(self, slot: S, rec: RunRecorder) -> None:
        """Undo whatever of `slot` may exist; raise if something could not be undone."""

    @abc.abstractmethod
    def describe(self, slot: S) -> str: ...

    def recorder(self, concurrency: int) -> RunRecorder:
        return RunRecorder(self.kind, self.unit, concurrency, self.steps)

    async def run(self, rec: RunRecorder) -> bool:
        seq = next(self._seq)
        slot = self._new(seq)
        self._live[seq] = (slot, rec)
        if await run_unit(rec.units, lambda: self._steps(slot, rec), self.code_of):
            del self._live[seq]
            return True
        await self._release_one(seq)
        return False

    async def _release_one(self, seq: int) -> None:
        slot, rec = self._live[seq]
        try:
            await self._release(slot, rec)
        except Exception:  # noqa: BLE001 - counted in the cleanup figures; reported as left over
            return
        del self._live[seq]

    async def release_all(self) -> list[str]:
        """Release every lifecycle still alive (callers bound the time); return what is left."""
        limiter = anyio.CapacityLimiter(_RELEASE_CONCURRENCY)

        async def release(seq: int) -> None:
            async with limiter:
                await self._release_one(seq)

        async with anyio.create_task_group() as tg:
            for seq in list(self._live):
                tg.start_soon(release, seq)
        return self.leftovers()

    def leftovers(self) -> list[str]:
        return [self.describe(slot) for slot, _ in self._live.values()]
