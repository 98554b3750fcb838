"""Shared extents on a filesystem with reflinks (xfs in a loop image): FIEMAP says which
ranges two images share, and a Delta reads only the rest."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from aiocsi.engine import metadata
from aiocsi.host import extents
from aiocsi.host.extents import BLOCK, Range
from aiocsi.host.files import copy_image_sync

from .conftest import driver_config, running_driver
from .test_snapshot_metadata import delta, extents_of, staged_block

MiB = 1024 * 1024


@pytest.fixture
async def xfs_dir(cleanup: Path) -> AsyncIterator[Path]:
    """An xfs filesystem (reflink on, the mkfs default) on a loop device, mounted under
    the test's directory; the cleanup fixture detaches the device."""
    backing = cleanup / "xfs.img"
    mounted = cleanup / "xfs"
    mounted.mkdir()
    with backing.open("wb") as image:
        image.truncate(512 * MiB)
    await anyio.run_process(["mkfs.xfs", "-q", "-m", "reflink=1", str(backing)])
    await anyio.run_process(["mount", "-o", "loop", str(backing), str(mounted)])
    try:
        yield mounted
    finally:
        await anyio.run_process(["umount", str(mounted)])


@contextlib.contextmanager
def opened(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _make_pair(directory: Path) -> tuple[Path, Path]:
    base, target = directory / "base.img", directory / "target.img"
    with base.open("wb") as image:
        image.write(b"s" * 8 * MiB)
        image.truncate(64 * MiB)
    assert copy_image_sync(base, target) == "reflink"
    with opened(target) as fd:
        os.pwrite(fd, b"t" * BLOCK, 2 * MiB)
        os.pwrite(fd, b"n" * 2 * BLOCK, 40 * MiB)
        os.fsync(fd)
    return base, target


async def test_reflinked_images_share_all_but_the_rewritten_blocks(xfs_dir: Path) -> None:
    base, target = await anyio.to_thread.run_sync(_make_pair, xfs_dir)
    with opened(base) as base_fd, opened(target) as target_fd:
        shared = extents.shared_ranges(base_fd, target_fd, 0, 64 * MiB)
        assert shared == [(0, 2 * MiB), (2 * MiB + BLOCK, 6 * MiB - BLOCK)]


async def test_delta_reads_only_what_the_filesystem_does_not_share(
    xfs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, target = await anyio.to_thread.run_sync(_make_pair, xfs_dir)
    compared: list[Range] = []
    compare = extents.changed_ranges

    def counting(fd_a: int, fd_b: int, start: int, end: int) -> list[Range]:
        compared.append((start, end - start))
        return compare(fd_a, fd_b, start, end)

    monkeypatch.setattr(extents, "changed_ranges", counting)
    with opened(base) as base_fd, opened(target) as target_fd:
        first, cursor = metadata.delta_window(base_fd, target_fd, 0, 64 * MiB)
        second, _ = metadata.delta_window(base_fd, target_fd, cursor, 64 * MiB)
    assert first == [(2 * MiB, BLOCK)]
    assert second == [(40 * MiB, 2 * BLOCK)]
    # 8 MiB of data in the first window, one block of it read; the new blocks, read whole.
    assert compared == [(2 * MiB, BLOCK), (40 * MiB, 2 * BLOCK)]


async def test_delta_on_a_reflink_pool(xfs_dir: Path, cleanup: Path) -> None:
    config = driver_config(cleanup, pool=xfs_dir / "pool")
    async with running_driver(config, cleanup) as d, staged_block(d, "xfs", 64 * MiB) as volume:
        await volume.write(0, 2 * MiB, b"a")
        base = await volume.snapshot("xfs-1")
        await volume.write(MiB, BLOCK, b"b")
        await volume.write(30 * MiB, BLOCK, b"c")
        target = await volume.snapshot("xfs-2")
        assert extents_of(await delta(d, base, target)) == [(MiB, BLOCK), (30 * MiB, BLOCK)]
