"""Group snapshots are crash-consistent across their members, and never leave a member
frozen: two mounted ext4 volumes with a writer appending to both, a capture that fails
mid-group, a call cancelled mid-capture, and a crash mid-group repaired by reconcile."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from typing import TYPE_CHECKING

import pytest
import structlog
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from aiocsi._proto.csi import v1 as csi
from aiocsi.engine.requests import CreateGroupSnapshot
from aiocsi.host import freeze
from aiocsi.models import GroupSnapshot, Snapshot

from .conftest import Driver, driver_config, running_driver
from .groups import create_group, delete_group, install_group_seam, member_ids, writable
from .test_controller import create, from_snapshot
from .test_node import Vol, cap_for, fails, loops_backed_by, new_volume

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.system
MiB = 1024 * 1024
RECORD = 8  # each record: a zero-padded counter and a newline


class Appender:
    """Appends record n to a, then record n to b, for n = 0, 1, ... until stopped: at
    any instant b holds the same records as a, or one fewer."""

    def __init__(self, a: Path, b: Path) -> None:
        self._paths = (a, b)
        self._stop = threading.Event()
        self.written = 0
        self.going = threading.Event()  # set once a few thousand records are down

    def run(self) -> None:
        fds = [os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) for p in self._paths]
        try:
            while not self._stop.is_set():
                record = f"{self.written:07d}\n".encode()
                for fd in fds:
                    os.write(fd, record)
                self.written += 1
                if self.written == 2000:
                    self.going.set()
        finally:
            for fd in fds:
                os.close(fd)

    def stop(self) -> None:
        self._stop.set()


def records(data: bytes) -> int:
    """How many records `data` holds, checking they are exactly 0, 1, 2, ..."""
    assert len(data) % RECORD == 0, "a torn record"
    count = len(data) // RECORD
    assert data == b"".join(f"{n:07d}\n".encode() for n in range(count))
    return count


async def e2fsck(image: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "e2fsck", "-n", "-f", str(image),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


async def two_mounted(d: Driver) -> tuple[Vol, Vol]:
    a = await new_volume(d, "a", cap_for("ext4"))
    b = await new_volume(d, "b", cap_for("ext4"))
    for vol in (a, b):
        await vol.stage()
    return a, b


async def thawed_and_rolled_back(d: Driver, *vols: Vol) -> None:
    """Every member takes writes again, nothing of the group is left; then unstage."""
    for vol in vols:
        assert await writable(vol.staging / "after"), f"{vol.id} is still frozen"
    await nothing_left(d)
    for vol in vols:
        await vol.unstage()


async def nothing_left(d: Driver) -> None:
    store = d.server.engine.resources.store
    assert await store.all_groups() == []
    assert await store.all_snapshots() == []
    assert not list((d.pool / "snapshots").iterdir())


async def test_restored_members_agree_up_to_a_common_point(driver: Driver) -> None:
    a, b = await two_mounted(driver)
    appender = Appender(a.staging / "log", b.staging / "log")
    writer = asyncio.create_task(asyncio.to_thread(appender.run))
    try:
        assert await asyncio.to_thread(appender.going.wait, 10)
        with structlog.testing.capture_logs() as logs:
            group = await create_group(driver, "g", [a.id, b.id])
        before = appender.written
        await asyncio.sleep(0.05)
        assert appender.written > before, "the writer runs again once thawed"
    finally:
        appender.stop()
        await writer
    [frozen] = [e for e in logs if e["event"] == "group_members_frozen"]
    assert sorted(frozen["volumes"]) == sorted([a.id, b.id])
    [created] = [e for e in logs if e["event"] == "group_snapshot_created"]
    assert set(created["methods"].values()) <= {"reflink", "sparse-copy"}

    by_source = {s.source_volume_id: s.snapshot_id for s in group.snapshots}
    restored: dict[str, Vol] = {}
    for vol in (a, b):
        volume = await create(
            driver, f"r-{vol.id[-6:]}", required=16 * MiB, source=from_snapshot(by_source[vol.id])
        )
        image = driver.pool / "volumes" / f"{volume.volume_id}.img"
        code, out = await e2fsck(image)
        assert code == 0, out
        restored[vol.id] = Vol(
            driver, volume.volume_id, vol.cap, driver.root / f"r-{vol.id}.staging", vol.target
        )
        await restored[vol.id].stage()
    in_a = records((restored[a.id].staging / "log").read_bytes())
    in_b = records((restored[b.id].staging / "log").read_bytes())
    assert in_a > 0
    assert in_b in (in_a, in_a - 1), f"a holds {in_a} records, b {in_b}"
    for vol in (*restored.values(), a, b):
        await vol.unstage()
    await delete_group(driver, group.group_snapshot_id, member_ids(group))


async def test_a_capture_failing_mid_group_thaws_every_member(driver: Driver) -> None:
    a, b = await two_mounted(driver)
    seam = install_group_seam(driver, fail_at=2)
    await fails(Status.INTERNAL, create_group(driver, "g", [a.id, b.id]))
    assert seam.calls == 2
    await thawed_and_rolled_back(driver, a, b)


async def test_a_cancelled_capture_leaves_nothing_frozen(driver: Driver) -> None:
    a, b = await two_mounted(driver)
    seam = install_group_seam(driver, hold_at=2)
    groups = driver.server.engine.groups
    call = asyncio.create_task(groups.create(CreateGroupSnapshot("g", [a.id, b.id])))
    await asyncio.wait_for(seam.reached.wait(), 10)
    assert seam.task is not None
    # Frozen now: a write waits (and lands once thawed).
    assert not await writable(a.staging / "during", timeout=0.3)
    seam.task.cancel()  # the operation's own task, mid-capture, members frozen
    with pytest.raises(asyncio.CancelledError):
        await call
    await thawed_and_rolled_back(driver, a, b)


async def test_a_caller_giving_up_leaves_nothing_frozen(driver: Driver) -> None:
    a, b = await two_mounted(driver)
    seam = install_group_seam(driver, hold_at=1)
    # Client and driver share the loop and the deadline: either timer may answer first.
    with pytest.raises((TimeoutError, GRPCError)) as expired:
        await create_group(driver, "g", [a.id, b.id], timeout=0.5)
    if isinstance(expired.value, GRPCError):
        assert expired.value.status is Status.DEADLINE_EXCEEDED
    seam.release.set()
    await driver.server.engine.drain()
    for vol in (a, b):
        assert await writable(vol.staging / "after"), f"{vol.id} is still frozen"
    group = await create_group(driver, "g", [a.id, b.id])  # the finished one
    await delete_group(driver, group.group_snapshot_id, member_ids(group))
    for vol in (a, b):
        await vol.unstage()


async def test_reconcile_thaws_and_rolls_back_a_group_cut_short(cleanup: Path) -> None:
    config = driver_config(cleanup)
    async with running_driver(config, cleanup) as d:
        a, b = await two_mounted(d)
        store = d.server.engine.resources.store
        # What a crash mid-group leaves: the records (not ready), one image captured, and
        # the members' filesystems frozen.
        group_id = f"group-{0:032x}"
        members = tuple(
            Snapshot(
                id=f"snap-{n:032x}",
                name=f"{group_id}/{v.id}",
                source_volume_id=v.id,
                size_bytes=16 * MiB,
                ready=False,
                created_at=0.0,
                group_snapshot_id=group_id,
            )
            for n, v in enumerate((a, b), start=1)
        )
        cut = GroupSnapshot(id=group_id, name="cut", ready=False, created_at=0.0, members=members)
        await store.insert_group(cut)
        (d.pool / "snapshots" / f"{members[0].id}.img").write_bytes(b"partial")
        for vol in (a, b):
            await asyncio.to_thread(
                freeze.freeze_sync, str(vol.staging), loops_backed_by(vol.image)
            )
    try:
        with structlog.testing.capture_logs() as logs:
            async with running_driver(config, cleanup) as d:
                [event] = [e for e in logs if e["event"] == "reconciled"]
                assert event["repaired"]["group_snapshot_rolled_back"] == 1
                assert event["repaired"]["filesystem_thawed"] == 2
                for vol in (a, b):
                    assert await writable(vol.staging / "after"), f"{vol.id} is still frozen"
                await nothing_left(d)
                await fails(Status.NOT_FOUND, d.client.controller.get_snapshot(
                    csi.GetSnapshotRequest(snapshot_id=members[0].id)))  # fmt: skip
                for vol in (a, b):
                    vol.driver = d
                    await vol.unstage()
    finally:
        for vol in (a, b):  # never leave a frozen filesystem behind, whatever failed
            with contextlib.suppress(Exception):
                freeze.thaw_sync(str(vol.staging), loops_backed_by(vol.image))
