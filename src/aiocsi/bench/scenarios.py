"""The scenarios: what runs, at which concurrencies, in which order.

Results go into `RunState` as they are made, so that a run stopped by --timeout or a
signal still reports everything measured up to that point.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import anyio

from aiocsi.bench.client import PROBE, CsiStubs, grpc_code
from aiocsi.bench.config import BenchConfig, Scenario
from aiocsi.bench.runner import Budget, Progress, measure, run_unit, run_workers
from aiocsi.bench.stats import ChurnProbe, PointRecorder, RunRecorder, Samples

if TYPE_CHECKING:
    from aiocsi.bench.client import CsiLifecycles
    from aiocsi.bench.raw import RawLifecycles


class Units(Protocol):
    """Something that runs one unit (a lifecycle, a call) per `run` into a recorder."""

    kind: str

    def recorder(self, concurrency: int) -> RunRecorder: ...

    async def run(self, rec: RunRecorder) -> bool: ...


class ProbeCalls:
    kind = "probe"

    def __init__(self, stubs: CsiStubs, rpc_timeout: float) -> None:
        self._stubs = stubs
        self._timeout = rpc_timeout

    def recorder(self, concurrency: int) -> RunRecorder:
        return RunRecorder(self.kind, "calls", concurrency, (PROBE,))

    async def run(self, rec: RunRecorder) -> bool:
        return await run_unit(rec.units, lambda: self.call(rec.op(PROBE)), grpc_code)

    async def call(self, samples: Samples) -> None:
        await measure(samples, lambda: self._stubs.probe(self._timeout), grpc_code)


@dataclass(frozen=True)
class DriverSide:
    lifecycles: CsiLifecycles
    probes: ProbeCalls
    # Churn's Probe stream has a connection of its own, as a livenessprobe sidecar would.
    stream_probes: ProbeCalls


@dataclass
class RunState:
    config: BenchConfig
    progress: Progress
    raw: RawLifecycles
    driver: DriverSide | None = None
    points: list[PointRecorder] = field(default_factory=list)
    idle_probes: Samples = field(default_factory=lambda: Samples(PROBE))
    loaded_probes: Samples = field(default_factory=lambda: Samples(PROBE))
    interrupted: str | None = None
    leftovers: list[str] = field(default_factory=list)

    def churn(self) -> ChurnProbe | None:
        if self.config.scenario is not Scenario.CHURN:
            return None
        return ChurnProbe.of(self.config.probe_rate, self.idle_probes, self.loaded_probes)


async def _run(
    state: RunState, units: Units, concurrency: int, into: list[RunRecorder], label: str
) -> None:
    rec = units.recorder(concurrency)
    into.append(rec)
    budget = Budget(state.config.count, state.config.duration)
    state.progress.phase(label, budget.total)
    rec.start()
    try:
        await run_workers(concurrency, budget, lambda: units.run(rec), state.progress)
    finally:
        rec.stop()


async def _points(state: RunState, main: Units, raw: Units | None) -> None:
    repeat = state.config.repeat
    for concurrency in state.config.concurrencies:
        point = PointRecorder(concurrency)
        state.points.append(point)
        for n in range(1, repeat + 1):
            label = f"c={concurrency} run {n}/{repeat}"
            await _run(state, main, concurrency, point.main, f"{main.kind} {label}")
            if raw is not None:
                await _run(state, raw, concurrency, point.raw, f"{raw.kind} {label}")


async def probe_stream(
    probes: ProbeCalls,
    samples: Samples,
    rate: float,
    *,
    count: int | None = None,
    stop: anyio.Event | None = None,
    progress: Progress | None = None,
) -> None:
    """Open loop: call i starts at start + i/rate whatever earlier calls are doing, so a
    slow answer delays no later call (no coordinated omission).
    """

    async def one() -> None:
        with contextlib.suppress(Exception):  # recorded by code in `samples`
            await probes.call(samples)
        if progress is not None:
            progress.advance(ok=True)

    started = time.monotonic()
    stop = stop or anyio.Event()
    async with anyio.create_task_group() as tg:
        for i in itertools.count():
            if (count is not None and i >= count) or stop.is_set():
                break
            with anyio.move_on_after(started + i / rate - time.monotonic()):
                await stop.wait()
            if stop.is_set():
                break
            tg.start_soon(one)


async def _churn(state: RunState, driver: CsiLifecycles, probes: ProbeCalls) -> None:
    config = state.config
    state.progress.phase(f"idle Probe at {config.probe_rate:g}/s", config.idle_probes)
    await probe_stream(
        probes,
        state.idle_probes,
        config.probe_rate,
        count=config.idle_probes,
        progress=state.progress,
    )
    concurrency = config.concurrencies[0]
    point = PointRecorder(concurrency)
    state.points.append(point)
    for n in range(1, config.repeat + 1):
        stop = anyio.Event()
        stream = functools.partial(
            probe_stream, probes, state.loaded_probes, config.probe_rate, stop=stop
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream)
            try:
                await _run(
                    state,
                    driver,
                    concurrency,
                    point.main,
                    f"churn c={concurrency} run {n}/{config.repeat}",
                )
            finally:
                stop.set()


async def run_scenario(state: RunState) -> None:
    scenario = state.config.scenario
    if scenario is Scenario.RAW:
        await _points(state, state.raw, None)
        return
    side = state.driver
    if side is None:
        raise RuntimeError(f"{scenario.value} needs a driver")
    if scenario is Scenario.PROBE:
        await _points(state, side.probes, None)
    elif scenario is Scenario.CHURN:
        await _churn(state, side.lifecycles, side.stream_probes)
    else:
        await _points(state, side.lifecycles, state.raw if state.config.compare_raw else None)
