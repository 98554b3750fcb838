"""A full pool loses no data silently (issue 18): an honest budget, disk-full errors as
RESOURCE_EXHAUSTED, and a volume condition that says when writes failed.

Each test places the pool on a small ext4 of its own (a sparse image on a loop device
under the test's directory) and fills that filesystem with a file of its own.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import anyio
import pytest
from grpclib.const import Status
from structlog.testing import capture_logs

from aiocsi._proto.csi import v1 as csi
from aiocsi.host.loop import all_loop_backing_files
from tests.system.conftest import Driver, MiB, driver_config, mount_capability, running_driver
from tests.system.test_controller import (
    create,
    delete,
    fails,
    free_bytes,
    get_volume,
    image,
    list_all_volume_ids,
    small_filesystem,
    snapshot,
    stage,
    unstage,
)

# The loop-stall guard too: every blocking step of these paths must run off the loop.
pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("loop_watchdog")]


def _write_some(fd: int, chunk: bytes) -> bool:
    """Write `chunk`; False once the filesystem is full."""
    try:
        os.write(fd, chunk)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        return False
    return True


async def fill(path: Path, leave: int) -> None:
    """Take all but `leave` bytes of the filesystem holding `path` (root writes past the
    reserve, so the last bytes are written until the kernel says no)."""

    def take() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            # The file's own extent blocks come out of the free space too: ask for less.
            wanted = max(free_bytes(path.parent) - leave - MiB, 0)
            if wanted:
                os.posix_fallocate(fd, os.fstat(fd).st_size, wanted)
            if leave == 0:
                chunk = b"\xa5" * 65536
                while _write_some(fd, chunk):
                    pass
            os.fsync(fd)
        finally:
            os.close(fd)

    await anyio.to_thread.run_sync(take)


def pool_loop_devices(d: Driver) -> list[str]:
    return [dev for dev, backing in all_loop_backing_files().items() if str(d.pool) in backing]


async def assert_nothing_left(d: Driver, volumes: list[str]) -> None:
    assert sorted(p.name for p in (d.pool / "volumes").iterdir()) == sorted(
        f"{v}.img" for v in volumes
    )
    assert list((d.pool / "snapshots").iterdir()) == []
    assert sorted(await list_all_volume_ids(d)) == sorted(volumes)
    listed = await d.client.controller.list_snapshots(csi.ListSnapshotsRequest())
    assert listed.entries == []


async def offered(d: Driver) -> int:
    reply = await d.client.controller.get_capacity(csi.GetCapacityRequest())
    return reply.available_capacity


async def test_a_full_pool_refuses_what_does_not_fit_and_recovers(cleanup: Path) -> None:
    async with small_filesystem(cleanup, 128 * MiB) as fs_root:
        config = driver_config(cleanup, pool=fs_root / "pool")
        async with running_driver(config, cleanup) as d:
            keep = await create(d, "keep", required=16 * MiB)
            filler = fs_root / "not-ours"
            await fill(filler, 23 * MiB)

            # What is really left: the free space, less the 16 MiB "keep" may still take.
            free = free_bytes(d.pool)
            assert free <= 24 * MiB
            left = await offered(d)
            assert free - 16 * MiB - 2 * MiB <= left <= free - 16 * MiB
            message = await fails(Status.RESOURCE_EXHAUSTED, create(d, "big", required=16 * MiB))
            assert str(d.pool) in message
            assert "16777216" in message  # the request, and the numbers behind the refusal
            assert f"{left // MiB}" in str(int(message.split(": ")[1].split()[0]) // MiB)
            await fails(Status.RESOURCE_EXHAUSTED, snapshot(d, "snap", keep.volume_id))
            await assert_nothing_left(d, [keep.volume_id])
            assert pool_loop_devices(d) == []

            # No room at all: formatting the volume at stage fails for space, not INTERNAL,
            # and leaves no loop device.
            await fill(filler, 0)
            staging = cleanup / "stage-keep"
            message = await fails(
                Status.RESOURCE_EXHAUSTED, stage(d, keep.volume_id, staging, mount_capability())
            )
            assert str(d.pool) in message
            assert pool_loop_devices(d) == []
            assert (await offered(d)) == 0

            # Room again: the same calls work, without a restart.
            await anyio.Path(filler).unlink()
            assert await offered(d) > 16 * MiB
            big = await create(d, "big", required=16 * MiB)
            snap = await snapshot(d, "snap", keep.volume_id)
            await stage(d, keep.volume_id, staging, mount_capability())
            await unstage(d, keep.volume_id, staging)
            await d.client.controller.delete_snapshot(
                csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id)
            )
            for volume in (big, keep):
                await delete(d, volume.volume_id)


async def write_and_sync(path: Path, size: int) -> OSError | None:
    """Write `size` bytes of random data and fsync, in a thread; the error, if any."""

    def write() -> OSError | None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                for _ in range(size // MiB):
                    os.write(fd, os.urandom(MiB))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            return exc
        return None

    return await anyio.to_thread.run_sync(write)


async def conditions(d: Driver, volume_id: str, target: Path) -> list[csi.VolumeCondition]:
    """The volume's condition from the node (stats) and the controller (get, list)."""
    stats = await d.client.node.node_get_volume_stats(
        csi.NodeGetVolumeStatsRequest(volume_id=volume_id, volume_path=str(target))
    )
    got = (await get_volume(d, volume_id)).status
    listed = await d.client.controller.list_volumes(csi.ListVolumesRequest())
    [entry] = [
        e for e in listed.entries if e.volume is not None and e.volume.volume_id == volume_id
    ]
    found = [
        stats.volume_condition,
        got.volume_condition if got else None,
        entry.status.volume_condition if entry.status else None,
    ]
    assert all(c is not None for c in found)
    return [c for c in found if c is not None]


async def publish(d: Driver, volume_id: str, staging: Path, target: Path) -> None:
    await stage(d, volume_id, staging, mount_capability())
    await d.client.node.node_publish_volume(
        csi.NodePublishVolumeRequest(
            volume_id=volume_id,
            staging_target_path=str(staging),
            target_path=str(target),
            volume_capability=mount_capability(),
        )
    )


async def punch_and_restore(d: Driver, volume_id: str, size: int) -> None:
    """A discard through the loop device (fstrim) punches a hole in the image: done here
    to the image's unused tail, as the loop driver does it; the watch allocates it again."""
    path = image(d, volume_id)
    await anyio.run_process(
        ["fallocate", "--punch-hole", "-o", str(size - 4 * MiB), "-l", "4M", str(path)]
    )
    assert path.stat().st_blocks * 512 <= size - 4 * MiB + MiB
    with capture_logs() as logs:
        await d.server.engine.resources.space.refresh()
    restored = [e for e in logs if "preallocation" in e["event"]]
    assert [(e["event"], e["volume_id"]) for e in restored] == [
        ("preallocation_restored", volume_id)
    ]
    assert path.stat().st_blocks * 512 >= size


async def unpublish(d: Driver, volume_id: str, staging: Path, target: Path) -> None:
    await d.client.node.node_unpublish_volume(
        csi.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=str(target))
    )
    await unstage(d, volume_id, staging)


async def test_a_write_lost_to_a_full_pool_makes_the_volume_abnormal(cleanup: Path) -> None:
    async with small_filesystem(cleanup, 128 * MiB) as fs_root:
        config = driver_config(cleanup, pool=fs_root / "pool")
        async with running_driver(config, cleanup) as d:
            sparse = await create(d, "sparse", required=48 * MiB)
            pre = await create(d, "pre", required=24 * MiB, params={"preallocate": "true"})
            points = {
                v.volume_id: (cleanup / f"stage-{v.volume_id}", cleanup / f"target-{v.volume_id}")
                for v in (sparse, pre)
            }
            filler = fs_root / "not-ours"
            for volume_id, (staging, target) in points.items():
                await publish(d, volume_id, staging, target)
            try:
                await punch_and_restore(d, pre.volume_id, 24 * MiB)
                space = d.server.engine.resources.space
                # Without it a lost ext4 data write is not knowable (errors_count stays 0).
                assert space.kernel_log.unavailable is None, space.kernel_log.unavailable
                for volume_id, (_, target) in points.items():
                    found = await conditions(d, volume_id, target)
                    assert not any(c.abnormal for c in found), found
                with capture_logs() as logs:
                    await space.refresh()
                assert not [e for e in logs if e["event"] == "pool_space_low"]

                await fill(filler, 0)
                # The pool can no longer hold what the sparse volume may still allocate.
                _, sparse_target = points[sparse.volume_id]
                for condition in await conditions(d, sparse.volume_id, sparse_target):
                    assert condition.abnormal
                    assert str(d.pool) in condition.message
                    assert "bytes free" in condition.message
                with capture_logs() as logs:
                    await space.refresh()
                    await space.refresh()  # logged once, when the level is crossed
                low = [e for e in logs if e["event"] == "pool_space_low"]
                assert len(low) == 1
                assert low[0]["volume_id"] == sparse.volume_id

                # A write that the pool cannot hold: refused, or lost and logged by the kernel.
                error = await write_and_sync(sparse_target / "data", 40 * MiB)
                assert error is None or error.errno in (errno.ENOSPC, errno.EIO)
                for condition in await conditions(d, sparse.volume_id, sparse_target):
                    assert condition.abnormal
                    assert "failed" in condition.message
                    assert "kernel logged" in condition.message or "recorded" in condition.message
                    assert str(d.pool) in condition.message

                # The preallocated volume on the same full pool keeps accepting writes.
                _, pre_target = points[pre.volume_id]
                assert await write_and_sync(pre_target / "data", 16 * MiB) is None
                for condition in await conditions(d, pre.volume_id, pre_target):
                    assert not condition.abnormal, condition.message

                await anyio.Path(filler).unlink()
                with capture_logs() as logs:
                    await space.refresh()
                assert [e["event"] for e in logs if e["event"].startswith("pool_space")] == [
                    "pool_space_ok"
                ]
            finally:
                await anyio.Path(filler).unlink(missing_ok=True)
                for volume_id, (staging, target) in points.items():
                    await unpublish(d, volume_id, staging, target)
            for volume_id in points:
                await delete(d, volume_id)
