"""host/extents.py on sparse files in the test directory (ext4 here): no root, no devices."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiocsi.host import extents
from aiocsi.host.extents import BLOCK

MIB = 1024 * 1024


@pytest.fixture
def image(workdir: Path) -> Iterator[int]:
    """A 16 MiB sparse file, open read-write; data is written by each test."""
    fd = os.open(workdir / "a.img", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.ftruncate(fd, 16 * MIB)
    try:
        yield fd
    finally:
        os.close(fd)


def _write(fd: int, offset: int, length: int, fill: bytes = b"x") -> None:
    os.pwrite(fd, fill * length, offset)


def test_data_ranges_lists_exactly_what_was_written(image: int) -> None:
    _write(image, 0, BLOCK)
    _write(image, 1 * MIB, 3 * BLOCK)
    _write(image, 8 * MIB, 64 * 1024)
    found = extents.data_ranges(image, 0, 16 * MIB, 100)
    assert found == [(0, BLOCK), (MIB, 3 * BLOCK), (8 * MIB, 64 * 1024)]


def test_data_ranges_widens_to_whole_blocks_and_clips_to_the_start(image: int) -> None:
    _write(image, MIB + 100, 10)
    assert extents.data_ranges(image, 0, 16 * MIB, 10) == [(MIB, BLOCK)]
    _write(image, 2 * MIB, 4 * BLOCK)
    # A start inside an extent: the answer begins at the block holding the start.
    assert extents.data_ranges(image, 2 * MIB + BLOCK + 5, 16 * MIB, 10) == [
        (2 * MIB + BLOCK, 3 * BLOCK)
    ]


def test_data_ranges_stops_at_the_limit_and_the_end(image: int) -> None:
    for index in range(5):
        _write(image, index * MIB, BLOCK)
    assert extents.data_ranges(image, 0, 16 * MIB, 2) == [(0, BLOCK), (MIB, BLOCK)]
    assert extents.data_ranges(image, MIB + BLOCK, 3 * MIB, 10) == [(2 * MIB, BLOCK)]
    assert extents.data_ranges(image, 5 * MIB, 16 * MIB, 10) == []


def test_next_data_is_none_past_the_last_data(image: int) -> None:
    _write(image, 3 * MIB, BLOCK)
    assert extents.next_data(image, 0) == 3 * MIB
    assert extents.next_data(image, 3 * MIB + BLOCK) is None


def test_changed_ranges_compares_block_by_block(workdir: Path, image: int) -> None:
    _write(image, 0, 2 * MIB)
    other = os.open(workdir / "b.img", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        _write(other, 0, 2 * MIB)
        _write(other, 5 * BLOCK, 2 * BLOCK, b"y")
        _write(other, MIB + 7, 1, b"z")  # one byte changes its whole block
        assert extents.changed_ranges(image, other, 0, 2 * MIB) == [
            (5 * BLOCK, 2 * BLOCK),
            (MIB, BLOCK),
        ]
        # Past the shorter file's end its bytes read as zeros.
        _write(other, 3 * MIB, BLOCK)
        assert extents.changed_ranges(image, other, 3 * MIB, 3 * MIB + 2 * BLOCK) == [
            (3 * MIB, BLOCK)
        ]
    finally:
        os.close(other)


def test_changed_ranges_holds_two_read_buffers_at_most() -> None:
    # The bound the engine's flat-memory promise rests on.
    assert extents.READ_BYTES <= 4 * MIB


def test_subtract_and_union() -> None:
    ranges = [(0, 100), (200, 100)]
    assert extents.subtract(ranges, [(50, 10), (90, 150)]) == [(0, 50), (60, 30), (240, 60)]
    assert extents.subtract(ranges, []) == ranges
    assert extents.subtract(ranges, [(0, 400)]) == []
    assert extents.union([(0, 10), (30, 10)], [(5, 10), (40, 5)]) == [(0, 15), (30, 15)]


def test_shared_ranges_is_empty_between_unrelated_files(workdir: Path, image: int) -> None:
    _write(image, 0, MIB)
    other = os.open(workdir / "b.img", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        _write(other, 0, MIB)
        os.fsync(other)
        assert extents.shared_ranges(image, other, 0, MIB) == []
    finally:
        os.close(other)


def test_physical_extents_maps_written_data(image: int) -> None:
    _write(image, MIB, 2 * BLOCK)
    found = extents.physical_extents(image, 0, 16 * MIB)
    assert [(e.logical, e.length) for e in found] == [(MIB, 2 * BLOCK)]
    assert found[0].physical > 0


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_open_images_close_at_once_when_idle(workdir: Path, image: int) -> None:
    del image
    images = extents.OpenImages()
    images.open(str(workdir / "a.img"))
    (fd,) = images.fds
    images.close()
    assert not _is_open(fd)
    with pytest.raises(ValueError, match="closed"), images.using():
        pass


def test_open_images_closed_during_a_step_close_when_it_ends(workdir: Path, image: int) -> None:
    # A cancelled caller closes while its step still runs in a worker: the step keeps a
    # valid descriptor to its end, and closes it then.
    del image
    images = extents.OpenImages()
    images.open(str(workdir / "a.img"))
    with images.using() as (fd,):
        images.close()
        assert _is_open(fd)
        assert extents.next_data(fd, 0) is None
    assert not _is_open(fd)


def test_open_images_report_a_missing_file(workdir: Path) -> None:
    images = extents.OpenImages()
    with pytest.raises(FileNotFoundError):
        images.open(str(workdir / "gone.img"))
    images.close()
