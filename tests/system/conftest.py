"""Fixtures for system tests: a real driver on a temporary socket, real loop devices, mounts."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from aiocsi._proto.csi import v1 as csi
from aiocsi.client.stubs import CsiStubs
from aiocsi.config import Config
from aiocsi.host.loop import all_loop_backing_files
from aiocsi.host.mount import parse_mountinfo
from aiocsi.logging import configure
from aiocsi.server.app import DriverServer

MiB = 1024 * 1024


def release_under(root: Path) -> None:
    """Unmount (newest first) and detach everything under `root`: only what tests made."""
    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    ours = [m for m in mounts if m.mount_point == str(root) or m.mount_point.startswith(f"{root}/")]
    for entry in sorted(ours, key=lambda m: m.mount_id, reverse=True):
        subprocess.run(["umount", entry.mount_point], check=False, capture_output=True)
    backing = all_loop_backing_files()
    devices = [dev for dev, file in backing.items() if file.startswith(f"{root}/")]
    # Read-only views are stacked on those devices: they go first.
    views = [dev for dev, below in backing.items() if below in devices]
    for device in views + devices:
        subprocess.run(["losetup", "-d", device], check=False, capture_output=True)


@pytest.fixture
def cleanup(workdir: Path) -> Iterator[Path]:
    """Everything a test creates under `workdir` is unmounted and detached, even on failure."""
    try:
        yield workdir
    finally:
        release_under(workdir)


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
async def running_driver(config: Config, root: Path) -> AsyncIterator[Driver]:
    server = DriverServer(config)
    await server.start()
    client = Csi.connect(config.socket_path)
    try:
        yield Driver(config, server, client, root)
    finally:
        client.channel.close()
        await server.drain()
        await server.close()


@pytest.fixture(scope="session", autouse=True)
def _logging() -> None:
    configure("json", "info")


@pytest.fixture
async def driver(cleanup: Path) -> AsyncIterator[Driver]:
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


class LoopWatchdog:
    """Measures how late the event loop wakes a sleeping task: a stall shows as lateness."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.worst = 0.0
        self.samples = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.interval)
            self.worst = max(self.worst, loop.time() - started - self.interval)
            self.samples += 1


MAX_LOOP_STALL = 0.050


@pytest.fixture
async def loop_watchdog() -> AsyncIterator[LoopWatchdog]:
    """Fails the test if the event loop (driver and client share it) stalls for > 50 ms.

    The test process's heap (pytest, hypothesis, every module of the suite) is frozen out
    of the garbage collector for the test, as `aiocsi serve` freezes its start-up heap: a
    full collection of it takes 70-90 ms here, and is the harness's stall, not the driver's.
    """
    gc.collect()
    gc.freeze()
    watchdog = LoopWatchdog()
    task = asyncio.create_task(watchdog.run())
    try:
        yield watchdog
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gc.unfreeze()
    assert watchdog.samples > 0
    assert watchdog.worst < MAX_LOOP_STALL, (
        f"the event loop stalled for {watchdog.worst * 1000:.1f} ms (limit 50 ms)"
    )
