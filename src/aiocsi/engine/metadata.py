"""Snapshot metadata: the allocated ranges of a snapshot and the ranges that changed
between two snapshots of one volume, streamed page by page (the SnapshotMetadata service).

Ranges are VARIABLE_LENGTH extents at 4 KiB granularity (`extents.BLOCK`): each starts on
a 4 KiB boundary and ends on one, or at the volume's end. Nothing holds an image's whole
map: each worker hand-off returns at most one page of extents (Allocated) or looks at
`DELTA_WINDOW` bytes of the images (Delta), and the stream keeps at most one page plus one
hand-off's worth. Each snapshot image is opened once per stream, so a snapshot deleted
while it is being read still streams to the end.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from aiocsi.engine.pool import Pool
from aiocsi.engine.snapshots import SnapshotService
from aiocsi.errors import InvalidArgument, NotFound, OutOfRange
from aiocsi.host import extents
from aiocsi.host.extents import OpenImages, Range
from aiocsi.models import Snapshot
from aiocsi.threads import WorkerPool

# max_results: 0 asks for our default; more than the cap is answered with the cap (the
# spec lets a plugin return fewer). Each reply is built and encoded on the event loop, at
# about 9 us an extent here: 256 cost 2.3 ms, the cap of 1,024 about 9.5 ms.
DEFAULT_MAX_RESULTS = 256
MAX_RESULTS_CAP = 1024
# Bytes of both images one Delta hand-off looks at: at most two READ_BYTES buffers live.
DELTA_WINDOW = 8 * 1024 * 1024


@dataclass(frozen=True)
class MetadataPage:
    capacity_bytes: int  # the volume's size when the snapshot was taken
    extents: list[Range]


def page_size(max_results: int) -> int:
    return DEFAULT_MAX_RESULTS if max_results == 0 else min(max_results, MAX_RESULTS_CAP)


def _merge_into(pending: list[Range], found: list[Range]) -> None:
    for start, length in found:
        if pending and pending[-1][0] + pending[-1][1] == start:
            pending[-1] = (pending[-1][0], pending[-1][1] + length)
        else:
            pending.append((start, length))


class SnapshotMetadata:
    def __init__(self, snapshots: SnapshotService, pool: Pool, workers: WorkerPool) -> None:
        self._snapshots = snapshots
        self._pool = pool
        self._workers = workers

    async def _open(self, images: OpenImages, *snaps: Snapshot) -> None:
        paths = [os.fspath(self._pool.snapshot_image(snap.id)) for snap in snaps]
        try:
            await self._workers.run_sync(images.open, *paths)
        except FileNotFoundError as exc:
            raise NotFound(f"a snapshot image is gone: {exc.filename}") from None

    @staticmethod
    def _check_offset(snap: Snapshot, starting_offset: int) -> None:
        if starting_offset >= snap.size_bytes:
            raise OutOfRange(
                f"starting_offset {starting_offset} is past the end of snapshot {snap.id} "
                f"({snap.size_bytes} bytes)"
            )

    async def allocated(
        self, snapshot_id: str, starting_offset: int, max_results: int
    ) -> AsyncGenerator[MetadataPage]:
        """Pages of the snapshot's allocated extents from `starting_offset` (the extent
        holding it is clipped to the 4 KiB block holding it)."""
        snap = await self._snapshots.get(snapshot_id)
        self._check_offset(snap, starting_offset)
        limit = page_size(max_results)
        images = OpenImages()
        try:
            await self._open(images, snap)
            cursor, end = starting_offset, snap.size_bytes

            async def steps() -> AsyncGenerator[list[Range]]:
                nonlocal cursor
                while cursor < end:
                    found = await self._workers.run_sync(
                        _allocated_step, images, cursor, end, limit
                    )
                    if not found:
                        return
                    yield found
                    cursor = found[-1][0] + found[-1][1]

            async with contextlib.aclosing(_pages(steps(), limit)) as pages:
                async for page in pages:
                    yield MetadataPage(snap.size_bytes, page)
        finally:
            images.close()

    async def delta(
        self, base_id: str, target_id: str, starting_offset: int, max_results: int
    ) -> AsyncGenerator[MetadataPage]:
        """Pages of the extents whose bytes differ between two snapshots of one volume.

        Ranges both images map to the same physical blocks (reflinks, FIEMAP) are skipped
        unread; the rest is compared block by block, `DELTA_WINDOW` bytes per hand-off.
        """
        base = await self._snapshots.get(base_id)
        target = await self._snapshots.get(target_id)
        if base.source_volume_id != target.source_volume_id:
            raise InvalidArgument(
                f"snapshots {base_id} and {target_id} are of different volumes "
                f"({base.source_volume_id}, {target.source_volume_id})"
            )
        self._check_offset(target, starting_offset)
        limit = page_size(max_results)
        images = OpenImages()
        try:
            await self._open(images, base, target)
            end = target.size_bytes

            async def steps() -> AsyncGenerator[list[Range]]:
                cursor = extents.BLOCK * (starting_offset // extents.BLOCK)
                while cursor < end:
                    found, cursor = await self._workers.run_sync(_delta_step, images, cursor, end)
                    if found:
                        yield found

            async with contextlib.aclosing(_pages(steps(), limit)) as pages:
                async for page in pages:
                    yield MetadataPage(target.size_bytes, page)
        finally:
            images.close()


def _allocated_step(images: OpenImages, cursor: int, end: int, limit: int) -> list[Range]:
    with images.using() as (fd,):
        return extents.data_ranges(fd, cursor, end, limit)


def _delta_step(images: OpenImages, cursor: int, end: int) -> tuple[list[Range], int]:
    with images.using() as (base_fd, target_fd):
        return delta_window(base_fd, target_fd, cursor, end)


async def _pages(steps: AsyncGenerator[list[Range]], limit: int) -> AsyncGenerator[list[Range]]:
    """Re-cut the hand-offs' extents into pages of `limit`, merging extents that touch
    across hand-offs: the last extent waits for the next hand-off before it is sent."""
    pending: list[Range] = []
    async with contextlib.aclosing(steps):
        async for found in steps:
            _merge_into(pending, found)
            while len(pending) > limit:
                yield pending[:limit]
                del pending[:limit]
    while pending:
        yield pending[:limit]
        del pending[:limit]


def delta_window(base_fd: int, target_fd: int, cursor: int, end: int) -> tuple[list[Range], int]:
    """The changed ranges in the next window holding data in either image, and where the
    window ended (in a worker thread)."""
    starts = [
        found
        for found in (extents.next_data(base_fd, cursor), extents.next_data(target_fd, cursor))
        if found is not None and found < end
    ]
    if not starts:
        return [], end
    low = max(cursor, extents.BLOCK * (min(starts) // extents.BLOCK))
    high = min(low + DELTA_WINDOW, end)
    most = DELTA_WINDOW // extents.BLOCK + 1
    data = extents.union(
        extents.data_ranges(base_fd, low, high, most),
        extents.data_ranges(target_fd, low, high, most),
    )
    unread = extents.subtract(data, extents.shared_ranges(base_fd, target_fd, low, high))
    changed: list[Range] = []
    for start, length in unread:
        _merge_into(changed, extents.changed_ranges(base_fd, target_fd, start, start + length))
    return changed, high
