"""Fixtures for system tests: a real driver on a temporary socket, real loop devices, mounts."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import uvloop

from aiocsi._proto.csi import v1 as csi
from aiocsi.client.stubs import CsiStubs
from aiocsi.config import Config
from aiocsi.host.loop import all_loop_backing_files
from aiocsi.host.mount import parse_mountinfo
from aiocsi.server.app import DriverServer
from tests.conftest import call_failed, leftovers_under

MiB = 1024 * 1024


def release_under(root: Path) -> None:
    """Unmount (newest first) and detach everything under `root`: only what tests made."""
    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    ours = [m for m in mounts if m.mount_point == str(root) or m.mount_point.startswith(f"{root}/")]
    for entry in sorted(ours, key=lambda m: m.mount_id, reverse=True):
        # A filesystem unmounted while frozen (a group snapshot test that failed before its
        # thaw) stays frozen and keeps its loop device open for good: thaw first, always.
        subprocess.run(["fsfreeze", "-u", entry.mount_point], check=False, capture_output=True)
        subprocess.run(["umount", entry.mount_point], check=False, capture_output=True)
    backing = all_loop_backing_files()
    devices = [dev for dev, file in backing.items() if file.startswith(f"{root}/")]
    # Read-only views are stacked on those devices: they go first.
    views = [dev for dev, below in backing.items() if below in devices]
    for device in views + devices:
        subprocess.run(["losetup", "-d", device], check=False, capture_output=True)


def sweep(root: Path) -> list[str]:
    """Release what is left under `root` (see `release_under`); returns what was there."""
    left = leftovers_under(root)
    release_under(root)
    return left


@pytest.fixture
def cleanup(workdir: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """Fails a test that leaves a loop device or a mount under `workdir`, then sweeps them.

    What is left is recorded first and only then unmounted and detached, so a leak fails
    the test that made it (a driver running as root must leave nothing behind), and never
    cascades into the tests after it. A test that failed already is not failed twice.
    """
    try:
        yield workdir
    finally:
        leaks = sweep(workdir)
    if leaks and not call_failed(request.node):
        pytest.fail(f"the test left {len(leaks)} thing(s) under {workdir}: {leaks}")


# The tests drive the driver through the same stubs the bench uses.
Csi = CsiStubs


@dataclass
class Driver:
    config: Config
    server: DriverServer
    client: Csi
    root: Path

    @property
    def pool(self) -> Path:
        return self.config.pool


def driver_config(root: Path, **overrides: object) -> Config:
    base = Config(
        socket_path=root / "csi.sock",
        node_id="test-node",
        pool=root / "pool",
        allowed_path_roots=(root,),
        default_volume_size=64 * MiB,
        shutdown_grace=5.0,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def unwatched_driver(config: Config, root: Path) -> AsyncIterator[Driver]:
    """An in-process driver, from start (reconcile included) to close, with no stall guard:
    for the few tests that stall the loop on purpose or watch part of it themselves."""
    server = DriverServer(config)
    await server.start()
    client = Csi.connect(config.socket_path)
    try:
        yield Driver(config, server, client, root)
    finally:
        client.channel.close()
        await server.drain()
        await server.close()


@contextlib.asynccontextmanager
async def running_driver(config: Config, root: Path) -> AsyncIterator[Driver]:
    """An in-process driver, from start (reconcile included) to close, its loop watched:
    the block fails if the loop stalled (checked only when the block itself succeeded)."""
    async with watched_loop() as watchdog, unwatched_driver(config, root) as driver:
        yield driver
    watchdog.check()


@pytest.fixture
async def driver(cleanup: Path, loop_watchdog: LoopWatchdog) -> AsyncIterator[Driver]:
    """A driver on a fresh pool under the test's directory, its loop watched for stalls."""
    del loop_watchdog  # requested for its check, which runs after the driver has stopped
    async with running_driver(driver_config(cleanup), cleanup) as running:
        yield running


def mount_capability(
    fs_type: str = "ext4", mode: int = 1, flags: tuple[str, ...] = ()
) -> csi.VolumeCapability:
    return csi.VolumeCapability(
        mount=csi.VolumeCapabilityMountVolume(fs_type=fs_type, mount_flags=list(flags)),
        access_mode=csi.VolumeCapabilityAccessMode(mode=csi.VolumeCapabilityAccessModeMode(mode)),
    )


def block_capability(mode: int = 1) -> csi.VolumeCapability:
    return csi.VolumeCapability(
        block=csi.VolumeCapabilityBlockVolume(),
        access_mode=csi.VolumeCapabilityAccessMode(mode=csi.VolumeCapabilityAccessModeMode(mode)),
    )


def volume_id_of(reply: csi.CreateVolumeResponse) -> str:
    assert reply.volume is not None
    return reply.volume.volume_id


def cpu_wait(thread_id: int) -> float:
    """Seconds the thread has spent runnable but waiting for a CPU (proc(5) schedstat)."""
    try:
        text = Path(f"/proc/self/task/{thread_id}/schedstat").read_text()
    except OSError:
        return 0.0
    return int(text.split()[1]) / 1e9


class LoopWatchdog:
    """Measures how late the event loop wakes a sleeping task: a stall shows as lateness.

    Time the loop thread spent waiting for a CPU is not counted: on a busy machine (other
    processes, the driver's own mkfs) the scheduler can hold a runnable thread back for
    tens of ms, and no code of ours blocked the loop then. A callback that runs long, or
    the loop thread sleeping in a system call (or on the GIL), still counts in full.

    perf_counter, not loop.time(): uvloop's clock is the time its current iteration began,
    so it would count the callbacks before the watchdog's as lateness, in whole ms.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.worst = 0.0
        self.worst_cpu_wait = 0.0  # not counted in `worst`, for the failure message
        self.samples = 0
        self.sampled = asyncio.Event()  # set by the first sample: the watchdog has run

    async def run(self) -> None:
        thread = threading.get_native_id()
        while True:
            started, waited = time.perf_counter(), cpu_wait(thread)
            await asyncio.sleep(self.interval)
            late = time.perf_counter() - started - self.interval
            cpu = cpu_wait(thread) - waited
            if late - cpu > self.worst:
                self.worst, self.worst_cpu_wait = late - cpu, cpu
            self.samples += 1
            self.sampled.set()

    async def settle(self) -> None:
        """Waits for one sample: a block shorter than the interval still gets looked at."""
        await asyncio.wait_for(self.sampled.wait(), timeout=1.0)

    def check(self) -> None:
        assert self.samples > 0
        assert self.worst < MAX_LOOP_STALL, (
            f"the event loop stalled for {self.worst * 1000:.1f} ms (limit 50 ms; another "
            f"{self.worst_cpu_wait * 1000:.1f} ms waiting for a CPU not counted)"
        )


MAX_LOOP_STALL = 0.050
WATCHDOG_TASK = "loop-watchdog"


class _HarnessHeap:
    """Freezes the test process's heap (pytest, hypothesis, every module of the suite) out
    of the garbage collector while a watchdog runs, as `aiocsi serve` freezes its start-up
    heap: a full collection of it takes 70-90 ms here, and is the harness's stall, not the
    driver's. Counted, so nested watchdogs unfreeze only when the outermost one ends."""

    depth = 0

    @classmethod
    def freeze(cls) -> None:
        if cls.depth == 0:
            gc.collect()
            gc.freeze()
        cls.depth += 1

    @classmethod
    def unfreeze(cls) -> None:
        cls.depth -= 1
        if cls.depth == 0:
            gc.unfreeze()


@contextlib.asynccontextmanager
async def watched_loop() -> AsyncIterator[LoopWatchdog]:
    """Runs a watchdog on the current loop; `check` it when the block ends normally."""
    _HarnessHeap.freeze()
    watchdog = LoopWatchdog()
    task = asyncio.create_task(watchdog.run(), name=WATCHDOG_TASK)
    try:
        yield watchdog
        await watchdog.settle()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        _HarnessHeap.unfreeze()


@pytest.fixture
async def loop_watchdog() -> AsyncIterator[LoopWatchdog]:
    """Fails the test if the event loop (driver and client share it) stalls for > 50 ms.

    Every `driver` runs one; a test asks for it to read its figures.
    """
    async with watched_loop() as watchdog:
        yield watchdog
    watchdog.check()


def pytest_asyncio_loop_factories(
    config: pytest.Config,  # noqa: ARG001 - hook signature
    item: pytest.Item,  # noqa: ARG001 - hook signature
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """System tests run the driver in-process on uvloop, the loop `aiocsi serve` uses."""
    return {"uvloop": uvloop.new_event_loop}
