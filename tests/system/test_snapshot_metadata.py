"""SnapshotMetadata on block volumes: real loop devices, real snapshots, real streams."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from aiocsi._proto.csi import v1 as csi
from aiocsi.engine.metadata import DEFAULT_MAX_RESULTS, MAX_RESULTS_CAP, page_size
from aiocsi.host.sysfs import all_loop_backing_files

from .conftest import Driver, block_capability

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
Extents = list[tuple[int, int]]


@dataclass
class BlockVolume:
    driver: Driver
    volume_id: str
    staging: Path
    device: str

    async def write(self, offset: int, length: int, fill: bytes) -> None:
        await self.write_many([offset], length, fill)

    async def write_many(self, offsets: list[int], length: int, fill: bytes) -> None:
        def write() -> None:
            fd = os.open(self.device, os.O_WRONLY | os.O_CLOEXEC)
            try:
                for offset in offsets:
                    os.pwrite(fd, fill * length, offset)
                os.fsync(fd)
            finally:
                os.close(fd)

        await asyncio.to_thread(write)

    async def snapshot(self, name: str) -> str:
        reply = await self.driver.client.controller.create_snapshot(
            csi.CreateSnapshotRequest(name=name, source_volume_id=self.volume_id)
        )
        assert reply.snapshot is not None
        return reply.snapshot.snapshot_id


@contextlib.asynccontextmanager
async def staged_block(d: Driver, name: str, size: int) -> AsyncIterator[BlockVolume]:
    reply = await d.client.controller.create_volume(
        csi.CreateVolumeRequest(
            name=name,
            capacity_range=csi.CapacityRange(required_bytes=size),
            volume_capabilities=[block_capability()],
        )
    )
    assert reply.volume is not None
    volume_id = reply.volume.volume_id
    staging = d.root / f"stage-{name}"
    await d.client.node.node_stage_volume(
        csi.NodeStageVolumeRequest(
            volume_id=volume_id,
            staging_target_path=str(staging),
            volume_capability=block_capability(),
        )
    )
    image = str(d.server.engine.resources.pool.volume_image(volume_id))
    device = next(dev for dev, file in all_loop_backing_files().items() if file == image)
    try:
        yield BlockVolume(d, volume_id, staging, device)
    finally:
        await d.client.node.node_unstage_volume(
            csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=str(staging))
        )


def metadata(d: Driver) -> csi.SnapshotMetadataStub:
    return csi.SnapshotMetadataStub(d.client.channel)


async def allocated(
    d: Driver, snapshot_id: str, *, starting_offset: int = 0, max_results: int = 0
) -> list[csi.GetMetadataAllocatedResponse]:
    request = csi.GetMetadataAllocatedRequest(
        snapshot_id=snapshot_id, starting_offset=starting_offset, max_results=max_results
    )
    return [reply async for reply in metadata(d).get_metadata_allocated(request)]


async def delta(
    d: Driver, base: str, target: str, *, starting_offset: int = 0, max_results: int = 0
) -> list[csi.GetMetadataDeltaResponse]:
    request = csi.GetMetadataDeltaRequest(
        base_snapshot_id=base,
        target_snapshot_id=target,
        starting_offset=starting_offset,
        max_results=max_results,
    )
    return [reply async for reply in metadata(d).get_metadata_delta(request)]


def extents_of(
    replies: list[csi.GetMetadataAllocatedResponse] | list[csi.GetMetadataDeltaResponse],
) -> Extents:
    for reply in replies:
        assert reply.block_metadata_type is csi.BlockMetadataType.VARIABLE_LENGTH
    return [(b.byte_offset, b.size_bytes) for r in replies for b in r.block_metadata]


async def fails(status: Status, call: object) -> str:
    with pytest.raises(GRPCError) as err:
        await call  # type: ignore[misc]
    assert err.value.status is status, err.value.message
    return str(err.value.message)


@dataclass
class TwoSnapshots:
    volume: BlockVolume
    base: str
    target: str


@pytest.fixture
async def two_snapshots(driver: Driver) -> AsyncIterator[TwoSnapshots]:
    """A 64 MiB block volume: known writes, a snapshot, more writes, a second snapshot."""
    async with staged_block(driver, "cbt", 64 * MiB) as volume:
        await volume.write(0, 64 * KiB, b"a")
        await volume.write(4 * MiB, 4 * KiB, b"b")
        await volume.write(10 * MiB, MiB, b"c")
        base = await volume.snapshot("cbt-1")
        await volume.write(4 * MiB, 4 * KiB, b"B")  # overwritten
        await volume.write(10 * MiB + 256 * KiB, 8 * KiB, b"C")  # overwritten inside
        await volume.write(20 * MiB, 12 * KiB, b"d")  # new
        await volume.write(0, 4 * KiB, b"a")  # written again, same bytes: not a change
        target = await volume.snapshot("cbt-2")
        yield TwoSnapshots(volume, base, target)


BASE_EXTENTS = [(0, 64 * KiB), (4 * MiB, 4 * KiB), (10 * MiB, MiB)]
CHANGED = [(4 * MiB, 4 * KiB), (10 * MiB + 256 * KiB, 8 * KiB), (20 * MiB, 12 * KiB)]


async def test_allocated_lists_exactly_the_written_ranges(
    driver: Driver, two_snapshots: TwoSnapshots
) -> None:
    base = await allocated(driver, two_snapshots.base)
    assert extents_of(base) == BASE_EXTENTS
    assert {r.volume_capacity_bytes for r in base} == {64 * MiB}
    target = await allocated(driver, two_snapshots.target)
    assert extents_of(target) == [*BASE_EXTENTS, (20 * MiB, 12 * KiB)]


async def test_delta_lists_exactly_the_changed_ranges(
    driver: Driver, two_snapshots: TwoSnapshots
) -> None:
    replies = await delta(driver, two_snapshots.base, two_snapshots.target)
    assert extents_of(replies) == CHANGED
    assert {r.volume_capacity_bytes for r in replies} == {64 * MiB}
    # The other way round: the same blocks differ.
    assert extents_of(await delta(driver, two_snapshots.target, two_snapshots.base)) == CHANGED
    assert await delta(driver, two_snapshots.base, two_snapshots.base) == []


async def test_starting_offset_resumes_a_stream(
    driver: Driver, two_snapshots: TwoSnapshots
) -> None:
    resumed = await allocated(driver, two_snapshots.target, starting_offset=10 * MiB + 512 * KiB)
    assert extents_of(resumed) == [(10 * MiB + 512 * KiB, 512 * KiB), (20 * MiB, 12 * KiB)]
    # An offset inside a block starts at that block.
    inside = await allocated(driver, two_snapshots.base, starting_offset=4 * MiB + 100)
    assert extents_of(inside) == [(4 * MiB, 4 * KiB), (10 * MiB, MiB)]
    after_first = await delta(
        driver, two_snapshots.base, two_snapshots.target, starting_offset=4 * MiB + 4 * KiB
    )
    assert extents_of(after_first) == CHANGED[1:]


async def test_max_results_caps_every_message(driver: Driver, two_snapshots: TwoSnapshots) -> None:
    assert (page_size(0), page_size(5000)) == (DEFAULT_MAX_RESULTS, MAX_RESULTS_CAP)
    one_each = await allocated(driver, two_snapshots.target, max_results=1)
    assert [len(r.block_metadata) for r in one_each] == [1, 1, 1, 1]
    assert extents_of(one_each) == [*BASE_EXTENTS, (20 * MiB, 12 * KiB)]
    two_each = await delta(driver, two_snapshots.base, two_snapshots.target, max_results=2)
    assert [len(r.block_metadata) for r in two_each] == [2, 1]
    assert extents_of(two_each) == CHANGED


async def test_errors(driver: Driver, two_snapshots: TwoSnapshots) -> None:
    base, target = two_snapshots.base, two_snapshots.target
    await fails(Status.INVALID_ARGUMENT, allocated(driver, ""))
    await fails(Status.INVALID_ARGUMENT, allocated(driver, base, starting_offset=-1))
    await fails(Status.INVALID_ARGUMENT, allocated(driver, base, max_results=-1))
    await fails(Status.INVALID_ARGUMENT, delta(driver, "", target))
    await fails(Status.INVALID_ARGUMENT, delta(driver, base, ""))
    await fails(Status.NOT_FOUND, allocated(driver, "snap-missing"))
    await fails(Status.NOT_FOUND, delta(driver, base, "snap-missing"))
    await fails(Status.NOT_FOUND, delta(driver, "snap-missing", target))
    message = await fails(Status.OUT_OF_RANGE, allocated(driver, base, starting_offset=64 * MiB))
    assert "past the end" in message
    await fails(Status.OUT_OF_RANGE, delta(driver, base, target, starting_offset=65 * MiB))
    async with staged_block(driver, "other", 16 * MiB) as other:
        await other.write(0, 4 * KiB, b"o")
        foreign = await other.snapshot("other-1")
    message = await fails(Status.INVALID_ARGUMENT, delta(driver, base, foreign))
    assert "different volumes" in message


async def test_a_1gib_sparse_image_streams_with_flat_memory(driver: Driver) -> None:
    # 16,384 extents over 1 GiB, every one changed between the snapshots: either map held
    # whole is over 2 MiB of objects; the stream holds a page and one window's buffers.
    stride, count = 64 * KiB, 16384
    async with staged_block(driver, "big", GiB) as volume:
        await volume.write_many([i * stride for i in range(count)], 4 * KiB, b"p")
        base = await volume.snapshot("big-1")
        await volume.write_many([i * stride for i in range(count)], 4 * KiB, b"q")
        target = await volume.snapshot("big-2")
    request = csi.GetMetadataAllocatedRequest(snapshot_id=base, max_results=64)
    tracemalloc.start()
    try:
        seen = most = 0
        async for reply in metadata(driver).get_metadata_allocated(request):
            assert len(reply.block_metadata) <= 64
            seen += len(reply.block_metadata)
            most = max(most, len(reply.block_metadata))
        _, allocated_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        changed = 0
        delta_request = csi.GetMetadataDeltaRequest(
            base_snapshot_id=base, target_snapshot_id=target, max_results=64
        )
        async for page in metadata(driver).get_metadata_delta(delta_request):
            assert len(page.block_metadata) <= 64
            changed += len(page.block_metadata)
        _, delta_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (seen, most, changed) == (count, 64, count)
    # Measured: about 0.1 MiB for Allocated and 0.3 MiB for Delta (a page of 64, and one
    # window's extents and read buffers). Pages of 64 also keep each reply's encoding on
    # the loop short while tracemalloc slows every allocation several times over.
    assert allocated_peak < MiB // 2, allocated_peak
    assert delta_peak < MiB, delta_peak


def open_snapshot_images(d: Driver) -> list[str]:
    """The snapshot images this process holds open (the driver runs in the test's process)."""
    held = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = str(fd.readlink())
            if target.startswith(str(d.pool / "snapshots")):
                held.append(target)
    return held


async def test_a_stream_dropped_by_its_client_closes_its_images(
    driver: Driver, two_snapshots: TwoSnapshots
) -> None:
    path = "/csi.v1.SnapshotMetadata/GetMetadataDelta"
    handler = csi.SnapshotMetadataBase().__mapping__()[path]
    request = csi.GetMetadataDeltaRequest(
        base_snapshot_id=two_snapshots.base, target_snapshot_id=two_snapshots.target, max_results=1
    )
    async with driver.client.channel.request(
        path, handler.cardinality, handler.request_type, handler.reply_type
    ) as stream:
        await stream.send_message(request, end=True)
        first = await stream.recv_message()
        assert first is not None
        assert [(b.byte_offset, b.size_bytes) for b in first.block_metadata] == CHANGED[:1]
        assert len(open_snapshot_images(driver)) == 2  # the stream holds both images
        await stream.cancel()
    for _ in range(100):
        if not open_snapshot_images(driver):
            break
        await asyncio.sleep(0.02)
    assert open_snapshot_images(driver) == []
    # The driver serves the next stream as before.
    assert extents_of(await delta(driver, two_snapshots.base, two_snapshots.target)) == CHANGED
