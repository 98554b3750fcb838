"""`scale`: many volumes (and snapshots) in a driver of its own, then what that state costs.

Creates --volumes volumes and --snapshots snapshots of them (CreateVolume, CreateSnapshot;
small, never staged), then measures full ListVolumes/ListSnapshots (following next_token
to the end, as a client without max_entries does), Probe from a process of its own while
listings run in a loop against idle, the driver's resident memory, and the time from
SIGTERM through a new start on the same state until Probe says ready. What it made goes
with the run's work directory: the driver's pool lies in it.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING

import anyio

from aiocsi._proto.csi import v1 as csi
from aiocsi.bench.lifecycles import capability
from aiocsi.bench.machine import process_memory
from aiocsi.bench.prober import probe_process
from aiocsi.bench.runner import Budget, measure, run_workers
from aiocsi.bench.spawn import START_TIMEOUT_S
from aiocsi.client.codes import BadResponse, grpc_code
from aiocsi.client.stubs import CsiStubs

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from aiocsi.bench.report import ScaleRecorder
    from aiocsi.bench.scenarios import DriverSide, RunState
    from aiocsi.bench.spawn import Spawned

_Page = csi.ListVolumesResponse | csi.ListSnapshotsResponse
CREATE_VOLUME, CREATE_SNAPSHOT = "CreateVolume", "CreateSnapshot"
LIST_VOLUMES, LIST_SNAPSHOTS = "ListVolumes", "ListSnapshots"
# The images are sparse and never written: the pool need not hold what they promise.
DRIVER_ARGS = ("--overcommit", "1000000")
_READY_POLL_S = 0.005
_READY_CALL_S = 1.0
# After a failed listing: a driver that refuses every call must not be spun against.
_LIST_RETRY_S = 0.1


async def _memory(rec: ScaleRecorder, label: str, pid: int, *, peak: bool = False) -> None:
    found = await anyio.to_thread.run_sync(process_memory, pid)
    rec.rss[label] = found["VmRSS"]
    if peak:
        rec.rss["peak_before_restart"] = found["VmHWM"]


async def _create_all(
    state: RunState, count: int, label: str, create: Callable[[int], Awaitable[str]]
) -> list[str]:
    """`create(i)` for i in 0..count-1, --concurrency at a time; the ids made, in order."""
    made: dict[int, str] = {}
    numbers = itertools.count()

    async def unit() -> bool:
        i = next(numbers)
        try:
            made[i] = await create(i)
        except Exception:  # noqa: BLE001 - counted by code in the recorder; the run goes on
            return False
        return True

    state.progress.phase(label, count)
    await run_workers(state.config.concurrencies[0], Budget(count, None), unit, state.progress)
    return [made[i] for i in sorted(made)]


def _made(call: str, name: str, made: str | None) -> str:
    if not made:
        raise BadResponse(f"{call} for {name} returned no id")
    return made


async def _create(state: RunState, side: DriverSide, rec: ScaleRecorder, base: str) -> None:
    config, stubs = state.config, side.stubs
    size = config.volume.size
    request_capacity = csi.CapacityRange(required_bytes=size)
    caps = [capability(config.volume)]

    async def volume(i: int) -> str:
        request = csi.CreateVolumeRequest(
            name=f"{base}-{i}", capacity_range=request_capacity, volume_capabilities=caps
        )
        reply = await measure(
            rec.create_op(CREATE_VOLUME),
            lambda: stubs.controller.create_volume(request, timeout=side.rpc_timeout),
            grpc_code,
        )
        return _made(CREATE_VOLUME, request.name, reply.volume.volume_id if reply.volume else None)

    async def snapshot(i: int) -> str:
        request = csi.CreateSnapshotRequest(
            source_volume_id=volume_ids[i % len(volume_ids)], name=f"{base}-snap-{i}"
        )
        reply = await measure(
            rec.create_op(CREATE_SNAPSHOT),
            lambda: stubs.controller.create_snapshot(request, timeout=side.rpc_timeout),
            grpc_code,
        )
        return _made(
            CREATE_SNAPSHOT, request.name, reply.snapshot.snapshot_id if reply.snapshot else None
        )

    started = time.perf_counter()
    volume_ids = await _create_all(state, config.volumes, "create volumes", volume)
    if config.snapshots and volume_ids:
        await _create_all(state, config.snapshots, "create snapshots", snapshot)
    rec.create_s = time.perf_counter() - started


async def _follow(page: Callable[[str], Awaitable[_Page]]) -> tuple[int, int]:
    """Ask for pages from the start until next_token is empty; (entries, pages)."""
    entries = pages = 0
    token = ""
    while True:
        reply = await page(token)
        pages += 1
        entries += len(reply.entries)
        token = reply.next_token
        if not token:
            return entries, pages


def _listers(side: DriverSide) -> dict[str, Callable[[], Awaitable[tuple[int, int]]]]:
    controller, timeout = side.stubs.controller, side.rpc_timeout
    return {
        LIST_VOLUMES: lambda: _follow(
            lambda token: controller.list_volumes(
                csi.ListVolumesRequest(starting_token=token), timeout=timeout
            )
        ),
        LIST_SNAPSHOTS: lambda: _follow(
            lambda token: controller.list_snapshots(
                csi.ListSnapshotsRequest(starting_token=token), timeout=timeout
            )
        ),
    }


async def _listings(state: RunState, side: DriverSide, rec: ScaleRecorder, seconds: float) -> None:
    """Full listings back to back for `seconds` (at least one of each kind)."""
    listers = _listers(side)
    kinds = [LIST_VOLUMES, LIST_SNAPSHOTS] if state.config.snapshots else [LIST_VOLUMES]
    deadline = time.monotonic() + seconds
    for n in itertools.count():
        if n >= len(kinds) and time.monotonic() >= deadline:
            return
        name = kinds[n % len(kinds)]
        try:
            entries, pages = await measure(rec.listing_op(name), listers[name], grpc_code)
        except Exception:  # noqa: BLE001 - counted by code; the loop goes on
            await anyio.sleep(_LIST_RETRY_S)
            continue
        rec.listed(name, entries, pages)


async def _until_ready(socket_path: Path, deadline: float) -> None:
    """Probe the new process until it answers ready=true."""
    stubs = CsiStubs.connect(socket_path)
    try:
        while True:
            try:
                await stubs.probe(_READY_CALL_S)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await anyio.sleep(_READY_POLL_S)
            else:
                return
    finally:
        stubs.close()


async def _restart(child: Spawned, rec: ScaleRecorder) -> None:
    started = time.perf_counter()
    await child.stop()
    stopped = time.perf_counter()
    await child.start()
    await _until_ready(child.socket_path, time.monotonic() + START_TIMEOUT_S)
    rec.stop_s.append(stopped - started)
    rec.to_ready_s.append(time.perf_counter() - stopped)


async def create(state: RunState, side: DriverSide, rec: ScaleRecorder) -> None:
    """Make the volumes, then the snapshots, and read the driver's memory."""
    await _create(state, side, rec, side.name_base)
    await _memory(rec, "after_create", _child(side).pid)


async def listings(state: RunState, side: DriverSide, rec: ScaleRecorder) -> None:
    """--repeat rounds of listings back to back, as long as the idle Probe phase each,
    with a Probe stream (in a process of its own) running through them."""
    config = state.config
    seconds = config.idle_probes / config.probe_rate
    for n in range(1, config.repeat + 1):
        state.progress.phase(f"listings with Probe at {config.probe_rate:g}/s, run {n}", None)
        async with probe_process(
            side.socket_path, config.probe_rate, side.rpc_timeout, state.loaded_probes
        ):
            await _listings(state, side, rec, seconds)
    await _memory(rec, "after_listings", _child(side).pid, peak=True)


async def restarts(state: RunState, side: DriverSide, rec: ScaleRecorder) -> None:
    """--repeat restarts on the same state, each until Probe says ready."""
    child = _child(side)
    for n in range(1, state.config.repeat + 1):
        state.progress.phase(f"restart {n}/{state.config.repeat}", None)
        await _restart(child, rec)
    await _memory(rec, "after_restart", child.pid)


def _child(side: DriverSide) -> Spawned:
    if side.spawned is None:
        raise RuntimeError("scale needs a spawned driver")
    return side.spawned
