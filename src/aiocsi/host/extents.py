"""Where an image file holds data, and which of its blocks differ from another image's.

Pure host code, every function blocking (call it from a worker thread) and bounded: each
takes a byte window or an extent budget, so a caller walks a large image in small steps.
Ranges are `(offset, length)` pairs in bytes, aligned to `BLOCK` (the last one may end
at the file's end), sorted, not overlapping, adjacent ones merged.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

BLOCK = 4096
# Bytes read from each file at a time by `changed_ranges`: its whole buffer is two of these.
READ_BYTES = 1024 * 1024

Range = tuple[int, int]

# <linux/fiemap.h>: struct fiemap (32 bytes) followed by fm_extent_count struct
# fiemap_extent (56 bytes each); FS_IOC_FIEMAP = _IOWR('f', 11, struct fiemap).
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
# Extents whose physical address says nothing reliable about their bytes: not yet placed,
# compressed or packed with others. Two files never count as sharing them.
FIEMAP_EXTENT_UNTRUSTED = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400
_HEADER = struct.Struct("=QQLLLL")
_EXTENT = struct.Struct("=QQQQQLLLL")
_EXTENTS_PER_CALL = 256


@dataclass(frozen=True)
class PhysicalExtent:
    logical: int
    physical: int
    length: int
    flags: int

    @property
    def trusted(self) -> bool:
        return not self.flags & FIEMAP_EXTENT_UNTRUSTED


@dataclass
class OpenImages:
    """Image files held open read-only for one stream: workers use them one step at a time
    (`using`, in a worker thread), and `close` never waits (it is called on the event loop,
    perhaps while a cancelled caller's step is still running in its thread: that step closes
    them when it ends, so no thread ever reads a descriptor that was closed and reused)."""

    fds: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closing: bool = False
    _closed: bool = False

    def open(self, *paths: str) -> None:
        """Open each path (worker thread); FileNotFoundError names a missing one."""
        try:
            with self._lock:
                for path in paths:
                    if self._closed:
                        return
                    self.fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        finally:
            self._close_if_asked()

    @contextlib.contextmanager
    def using(self) -> Iterator[list[int]]:
        try:
            with self._lock:
                if self._closed:
                    raise ValueError("the images are closed")
                yield self.fds
        finally:
            self._close_if_asked()

    def close(self) -> None:
        self._closing = True
        self._close_if_asked()

    def _close_if_asked(self) -> None:
        # Both sides try after their last step: whichever gets the lock closes.
        if self._closing and self._lock.acquire(blocking=False):
            try:
                if not self._closed:
                    self._closed = True
                    for fd in self.fds:
                        os.close(fd)
            finally:
                self._lock.release()


def _align_down(value: int) -> int:
    return value - value % BLOCK


def _align_up(value: int, limit: int) -> int:
    return min(-(-value // BLOCK) * BLOCK, limit)


def _append(ranges: list[Range], start: int, end: int) -> None:
    """Add [start, end) to sorted `ranges`, merging with the last one when they touch."""
    if end <= start:
        return
    if ranges and ranges[-1][0] + ranges[-1][1] >= start:
        last_start = ranges[-1][0]
        ranges[-1] = (last_start, max(end, last_start + ranges[-1][1]) - last_start)
    else:
        ranges.append((start, end - start))


def _seek(fd: int, offset: int, whence: int) -> int | None:
    """lseek(2) with SEEK_DATA/SEEK_HOLE; None past the last data (ENXIO)."""
    try:
        return os.lseek(fd, offset, whence)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return None
        raise


def data_ranges(fd: int, start: int, end: int, limit: int) -> list[Range]:
    """Up to `limit` data ranges of `fd` in [start, end), widened to whole blocks (and
    clipped to the block holding `start`), found with SEEK_DATA/SEEK_HOLE."""
    ranges: list[Range] = []
    cursor = _align_down(start)
    while cursor < end and len(ranges) < limit:
        data = _seek(fd, cursor, os.SEEK_DATA)
        if data is None or data >= end:
            break
        hole = _seek(fd, data, os.SEEK_HOLE)
        hole_at = end if hole is None else min(hole, end)
        _append(ranges, max(_align_down(data), cursor), _align_up(hole_at, end))
        cursor = _align_up(hole_at, end)
    return ranges


def next_data(fd: int, offset: int) -> int | None:
    """The first offset at or after `offset` that holds data, or None."""
    return _seek(fd, offset, os.SEEK_DATA)


def physical_extents(fd: int, start: int, end: int) -> list[PhysicalExtent]:
    """The filesystem's map of [start, end) of `fd` (FIEMAP, dirty pages synced first).

    Raises OSError(EOPNOTSUPP/ENOTTY) where the filesystem has no FIEMAP (tmpfs).
    """
    found: list[PhysicalExtent] = []
    cursor = start
    buffer = bytearray(_HEADER.size + _EXTENT.size * _EXTENTS_PER_CALL)
    while cursor < end:
        _HEADER.pack_into(
            buffer, 0, cursor, end - cursor, FIEMAP_FLAG_SYNC, 0, _EXTENTS_PER_CALL, 0
        )
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buffer)
        mapped = _HEADER.unpack_from(buffer, 0)[3]
        if mapped == 0:
            break
        last = False
        for index in range(mapped):
            logical, physical, length, _, _, flags, _, _, _ = _EXTENT.unpack_from(
                buffer, _HEADER.size + index * _EXTENT.size
            )
            found.append(PhysicalExtent(logical, physical, length, flags))
            last = bool(flags & FIEMAP_EXTENT_LAST)
        tail = found[-1]
        if last or tail.logical + tail.length <= cursor:
            break
        cursor = tail.logical + tail.length
    return found


def shared_ranges(fd_a: int, fd_b: int, start: int, end: int) -> list[Range]:
    """Ranges of [start, end) that both files map to the same physical blocks (reflinked
    and untouched since), so their bytes are equal without reading them. Empty where the
    filesystem cannot say (no FIEMAP)."""
    try:
        map_a = physical_extents(fd_a, start, end)
        map_b = physical_extents(fd_b, start, end)
    except OSError as exc:
        if exc.errno in {errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL}:
            return []
        raise
    shared: list[Range] = []
    index_b = 0
    for a in map_a:
        a_end = a.logical + a.length
        while index_b < len(map_b) and map_b[index_b].logical + map_b[index_b].length <= a.logical:
            index_b += 1
        probe = index_b
        while probe < len(map_b) and map_b[probe].logical < a_end:
            b = map_b[probe]
            same_place = a.physical - a.logical == b.physical - b.logical
            if same_place and a.trusted and b.trusted:
                low = max(a.logical, b.logical, start)
                high = min(a_end, b.logical + b.length, end)
                # Only whole blocks count: a partial one is compared by its bytes.
                _append(shared, _align_up(low, high), _align_down(high) if high < end else high)
            probe += 1
    return shared


def _read(fd: int, offset: int, length: int) -> bytes:
    """`length` bytes at `offset`, zeros past the end of the file (a smaller base)."""
    data = os.pread(fd, length, offset)
    return data if len(data) == length else data.ljust(length, b"\0")


def changed_ranges(fd_a: int, fd_b: int, start: int, end: int) -> list[Range]:
    """Blocks of [start, end) whose bytes differ between the two files, read `READ_BYTES`
    at a time from each (a block past either file's end reads as zeros)."""
    changed: list[Range] = []
    offset = start
    while offset < end:
        length = min(READ_BYTES, end - offset)
        a = _read(fd_a, offset, length)
        b = _read(fd_b, offset, length)
        if a != b:
            for block in range(0, length, BLOCK):
                if a[block : block + BLOCK] != b[block : block + BLOCK]:
                    _append(changed, offset + block, min(offset + block + BLOCK, end))
        offset += length
    return changed


def subtract(ranges: list[Range], holes: list[Range]) -> list[Range]:
    """`ranges` with every part covered by `holes` taken out (both sorted)."""
    left: list[Range] = []
    index = 0
    for start, length in ranges:
        cursor, end = start, start + length
        while index < len(holes) and holes[index][0] + holes[index][1] <= cursor:
            index += 1
        probe = index
        while cursor < end and probe < len(holes) and holes[probe][0] < end:
            hole_start, hole_length = holes[probe]
            _append(left, cursor, min(hole_start, end))
            cursor = max(cursor, hole_start + hole_length)
            probe += 1
        _append(left, cursor, end)
    return left


def union(first: list[Range], second: list[Range]) -> list[Range]:
    merged: list[Range] = []
    for start, length in sorted(first + second):
        _append(merged, start, start + length)
    return merged
