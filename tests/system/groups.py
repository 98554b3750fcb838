"""Helpers for the group snapshot tests: the GroupController stub, calls, and a capture
seam that can hold or fail a member's capture."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiocsi._proto.csi import v1 as csi
from aiocsi.errors import HostFailure

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import Driver


def stub(d: Driver) -> csi.GroupControllerStub:
    return csi.GroupControllerStub(d.client.channel)


async def create_group(
    d: Driver, name: str, sources: list[str], *, timeout: float | None = None
) -> csi.VolumeGroupSnapshot:
    reply = await stub(d).create_volume_group_snapshot(
        csi.CreateVolumeGroupSnapshotRequest(name=name, source_volume_ids=sources),
        timeout=timeout,
    )
    assert reply.group_snapshot is not None
    return reply.group_snapshot


async def get_group(
    d: Driver, group_id: str, ids: list[str] | None = None
) -> csi.VolumeGroupSnapshot:
    reply = await stub(d).get_volume_group_snapshot(
        csi.GetVolumeGroupSnapshotRequest(group_snapshot_id=group_id, snapshot_ids=ids or [])
    )
    assert reply.group_snapshot is not None
    return reply.group_snapshot


async def delete_group(d: Driver, group_id: str, ids: list[str]) -> None:
    await stub(d).delete_volume_group_snapshot(
        csi.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=group_id, snapshot_ids=ids)
    )


def member_ids(group: csi.VolumeGroupSnapshot) -> list[str]:
    return sorted(s.snapshot_id for s in group.snapshots)


@dataclass
class Seam:
    """Stands in for the engine's per-member capture: counts calls, can hold the Nth
    until released, fail the Nth, and remembers the task the capture ran in."""

    real: Callable[[str, str], Awaitable[str]]
    hold_at: int = 0  # 1-based call to hold; 0: none
    fail_at: int = 0  # 1-based call to fail; 0: none
    calls: int = 0
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[object] | None = None

    async def __call__(self, volume_id: str, snapshot_id: str) -> str:
        self.calls += 1
        self.task = asyncio.current_task()
        if self.calls == self.fail_at:
            raise HostFailure(f"injected capture failure for {volume_id}")
        if self.calls == self.hold_at:
            self.reached.set()
            await self.release.wait()
        return await self.real(volume_id, snapshot_id)


def install_group_seam(d: Driver, *, hold_at: int = 0, fail_at: int = 0) -> Seam:
    groups = d.server.engine.groups
    seam = Seam(groups.capture, hold_at=hold_at, fail_at=fail_at)
    groups.capture = seam
    return seam


def write_completes(path: Path, data: bytes) -> None:
    """Append to `path` and fsync (in a worker thread: it blocks while frozen)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


async def writable(path: Path, timeout: float = 10.0) -> bool:
    """Whether a write (and fsync) to `path` completes in time: a frozen fs blocks it."""
    try:
        await asyncio.wait_for(asyncio.to_thread(write_completes, path, b"x"), timeout)
    except TimeoutError:
        return False
    return True
