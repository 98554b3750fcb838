"""One bench run from start to report: work directory, driver, scenario, cleanup.

Phases and what stops them: the scenario runs until its budget is spent, --timeout
passes, or the first SIGINT/SIGTERM; the cleanup (deleting every volume still held) runs
within --cleanup-timeout and only a second signal cuts it short; stopping a spawned
driver and sweeping the work directory always runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio

from aiocsi import __version__
from aiocsi.bench.config import Scenario
from aiocsi.bench.lifecycles import CsiLifecycles
from aiocsi.bench.machine import machine_info
from aiocsi.bench.prober import ProbeCalls
from aiocsi.bench.raw import RawLifecycles
from aiocsi.bench.report import Report
from aiocsi.bench.runner import LoopLag
from aiocsi.bench.scale import DRIVER_ARGS as SCALE_DRIVER_ARGS
from aiocsi.bench.scenarios import DriverSide, RunState, run_scenario
from aiocsi.bench.spawn import SetupError, spawned_bare, spawned_driver
from aiocsi.bench.workspace import Workspace
from aiocsi.client.codes import grpc_code
from aiocsi.client.stubs import CsiStubs

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from aiocsi.bench.config import BenchConfig
    from aiocsi.bench.runner import Progress
    from aiocsi.bench.spawn import Spawned

_FIRST_PROBE_TIMEOUT_S = 10.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupts:
    """SIGINT/SIGTERM cancel the armed phase once they have arrived `after` times in all."""

    def __init__(self) -> None:
        self.count = 0
        self._scope: anyio.CancelScope | None = None
        self._after = 1

    def __call__(self) -> None:
        self.count += 1
        self._check()

    def arm(self, scope: anyio.CancelScope | None, after: int = 1) -> None:
        self._scope, self._after = scope, after
        self._check()

    def _check(self) -> None:
        if self._scope is not None and self.count >= self._after:
            self._scope.cancel()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for signum in _SIGNALS:
            loop.add_signal_handler(signum, self)
        try:
            yield
        finally:
            for signum in _SIGNALS:
                loop.remove_signal_handler(signum)


async def _stubs(
    config: BenchConfig, socket_path: Path, stack: AsyncExitStack, what: str
) -> CsiStubs:
    stubs = CsiStubs.connect(socket_path)
    stack.callback(stubs.close)
    try:
        await stubs.probe(min(config.rpc_timeout, _FIRST_PROBE_TIMEOUT_S))
    except Exception as exc:
        raise SetupError(
            f"the {what} at {socket_path} does not answer Probe: {grpc_code(exc)} {exc}"
        ) from exc
    return stubs


async def _bare(config: BenchConfig, workspace: Workspace, stack: AsyncExitStack) -> ProbeCalls:
    socket_path = await stack.enter_async_context(spawned_bare(workspace))
    stubs = await _stubs(config, socket_path, stack, "bare server")
    return ProbeCalls(stubs, config.rpc_timeout, kind="bare")


async def _connect(
    config: BenchConfig,
    socket_path: Path,
    workspace: Workspace,
    stack: AsyncExitStack,
    spawned: Spawned | None,
) -> DriverSide:
    stubs = await _stubs(config, socket_path, stack, "driver")
    bare = await _bare(config, workspace, stack) if config.compare_bare else None
    name_base = f"{config.name_prefix}-{secrets.token_hex(4)}"
    lifecycles = CsiLifecycles(stubs, config.volume, workspace, name_base, config.rpc_timeout)
    return DriverSide(
        lifecycles,
        ProbeCalls(stubs, config.rpc_timeout),
        socket_path,
        config.rpc_timeout,
        stubs,
        name_base,
        bare,
        spawned,
    )


async def _scenario_phase(state: RunState, interrupts: Interrupts) -> None:
    with anyio.move_on_after(state.config.timeout) as scope:
        interrupts.arm(scope)
        await run_scenario(state)
    interrupts.arm(None)
    if scope.cancelled_caught:
        state.interrupted = "signal" if interrupts.count else "timeout"


async def _cleanup_phase(state: RunState, interrupts: Interrupts) -> None:
    """Release every lifecycle still holding something; a second signal cuts this short."""
    owners = [state.raw] + ([state.driver.lifecycles] if state.driver else [])
    with anyio.move_on_after(state.config.cleanup_timeout) as scope:
        interrupts.arm(scope, after=2)
        for owner in owners:
            await owner.release_all()
    interrupts.arm(None)
    state.leftovers.extend(left for owner in owners for left in owner.leftovers())


async def _run_in(workspace: Workspace, state: RunState, interrupts: Interrupts) -> None:
    config = state.config
    async with AsyncExitStack() as stack:
        if config.scenario.needs_driver:
            socket_path, spawned = config.endpoint, None
            if socket_path is None:
                # Scale's flags first, so that a --driver-arg of the same name wins.
                extra = SCALE_DRIVER_ARGS if config.scenario is Scenario.SCALE else ()
                spawned = await stack.enter_async_context(
                    spawned_driver(
                        workspace,
                        config.volume,
                        (*extra, *config.driver_args),
                        config.driver_log,
                    )
                )
                socket_path = spawned.socket_path
            state.driver = await _connect(config, socket_path, workspace, stack, spawned)
        try:
            await _scenario_phase(state, interrupts)
        finally:
            with anyio.CancelScope(shield=True):
                await _cleanup_phase(state, interrupts)


async def _run(config: BenchConfig, progress: Progress, interrupts: Interrupts) -> RunState:
    try:
        workspace = await Workspace.create(config.workdir)
    except OSError as exc:
        raise SetupError(f"cannot create the work directory: {exc}") from exc
    state = RunState(config, progress, RawLifecycles(config.volume, workspace))
    try:
        await _run_in(workspace, state, interrupts)
    finally:
        with anyio.CancelScope(shield=True):
            if not config.scenario.needs_driver:
                await workspace.sweep()  # only raw's own mounts and loop devices live there
            state.leftovers.extend(await workspace.remove())
    return state


async def run_bench(config: BenchConfig, progress: Progress) -> Report:
    """Run the configured scenario and return its report; SetupError if it cannot start."""
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    started, cpu_started = time.perf_counter(), time.process_time()
    lag = LoopLag()
    interrupts = Interrupts()
    failure: Exception | None = None
    with interrupts.installed():
        machine = await anyio.to_thread.run_sync(machine_info)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lag.run)
            try:
                state = await _run(config, progress, interrupts)
            except Exception as exc:  # noqa: BLE001 - re-raised below, not as an ExceptionGroup
                failure = exc
            tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return Report.build(
        scenario=config.scenario.value,
        version=__version__,
        started_at=started_at,
        wall_s=time.perf_counter() - started,
        parameters=config.parameters(),
        machine=machine,
        points=[p.result() for p in state.points],
        churn=state.churn(),
        scale=state.scale.result() if state.scale is not None else None,
        loop_lag=lag.samples,
        interrupted=state.interrupted,
        leftovers=state.leftovers,
        client_cpu_s=time.process_time() - cpu_started,
    )
