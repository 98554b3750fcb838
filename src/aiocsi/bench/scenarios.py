"""The scenarios: what runs, at which concurrencies, in which order.

Results go into `RunState` as they are made, so that a run stopped by --timeout or a
signal still reports everything measured up to that point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from aiocsi.bench import scale
from aiocsi.bench.config import BenchConfig, Scenario
from aiocsi.bench.lifecycles import PROBE
from aiocsi.bench.prober import ProbeCalls, probe_process
from aiocsi.bench.report import ScaleRecorder
from aiocsi.bench.runner import Budget, Progress, run_workers
from aiocsi.bench.stats import ChurnProbe, PointRecorder, RunRecorder, Samples

if TYPE_CHECKING:
    from pathlib import Path

    from aiocsi.bench.lifecycles import CsiLifecycles
    from aiocsi.bench.raw import RawLifecycles
    from aiocsi.bench.spawn import Spawned
    from aiocsi.client.stubs import CsiStubs


class Units(Protocol):
    """Something that runs one unit (a lifecycle, a call) per `run` into a recorder."""

    kind: str

    def recorder(self, concurrency: int) -> RunRecorder: ...

    async def run(self, rec: RunRecorder) -> bool: ...


@dataclass(frozen=True)
class DriverSide:
    lifecycles: CsiLifecycles
    probes: ProbeCalls
    # Churn's Probe stream runs in a process of its own, as a livenessprobe sidecar does.
    socket_path: Path
    rpc_timeout: float
    stubs: CsiStubs
    # Lifecycles' volume names start with it; scale's too.
    name_base: str
    # `probe --compare-bare`: the same calls against a bare grpclib server (bench/bare.py).
    bare: ProbeCalls | None = None
    # --spawn: the driver process (scale reads its memory and restarts it).
    spawned: Spawned | None = None


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
    scale: ScaleRecorder | None = None

    def __post_init__(self) -> None:
        if self.config.scenario is Scenario.SCALE:
            self.scale = ScaleRecorder(self.config.volumes, self.config.snapshots)

    def churn(self) -> ChurnProbe | None:
        """Probe at a rate, idle and under load (churn: lifecycles; scale: listings)."""
        if not self.config.probes_at_rate:
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


async def _idle(state: RunState, side: DriverSide) -> None:
    """--idle-probes Probe calls at --probe-rate from a process of their own, before any
    load."""
    config = state.config
    state.progress.phase(f"idle Probe at {config.probe_rate:g}/s", config.idle_probes)
    async with probe_process(
        side.socket_path,
        config.probe_rate,
        side.rpc_timeout,
        state.idle_probes,
        count=config.idle_probes,
    ):
        pass
    for _ in range(config.idle_probes):
        state.progress.advance(ok=True)


async def _scale(state: RunState, side: DriverSide) -> None:
    rec = state.scale
    if rec is None:  # pragma: no cover - made with the state for every scale run
        raise RuntimeError("scale has no recorder")
    await scale.create(state, side, rec)
    await _idle(state, side)
    await scale.listings(state, side, rec)
    await scale.restarts(state, side, rec)


async def _churn(state: RunState, side: DriverSide) -> None:
    config = state.config
    await _idle(state, side)
    concurrency = config.concurrencies[0]
    point = PointRecorder(concurrency)
    state.points.append(point)
    for n in range(1, config.repeat + 1):
        async with probe_process(
            side.socket_path, config.probe_rate, side.rpc_timeout, state.loaded_probes
        ):
            await _run(
                state,
                side.lifecycles,
                concurrency,
                point.main,
                f"churn c={concurrency} run {n}/{config.repeat}",
            )


async def run_scenario(state: RunState) -> None:
    scenario = state.config.scenario
    if scenario is Scenario.RAW:
        await _points(state, state.raw, None)
        return
    side = state.driver
    if side is None:
        raise RuntimeError(f"{scenario.value} needs a driver")
    if scenario is Scenario.PROBE:
        # With --compare-bare, each run against the driver is followed by one against the
        # bare server: the two alternate, so a noisy neighbour hits both alike.
        await _points(state, side.probes, side.bare)
    elif scenario is Scenario.CHURN:
        await _churn(state, side)
    elif scenario is Scenario.SCALE:
        await _scale(state, side)
    else:
        await _points(state, side.lifecycles, state.raw if state.config.compare_raw else None)
