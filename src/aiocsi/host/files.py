"""Image files in the pool: created exclusively, grown, copied sparsely, removed durably;
and the small file helpers the other host modules share (mount targets, procfs reads,
canonical paths).

The `*_sync` functions and the small stat helpers block; async callers run them through
the pool the engine hands in (`aiocsi.threads.WorkerPool`), as the async wrappers here do.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from aiocsi.host.errors import HostConflict

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from aiocsi.threads import WorkerPool

CopyMethod = Literal["reflink", "sparse-copy"]

# <linux/fs.h>: _IOW(0x94, 9, int), clone a whole file's extents (btrfs, xfs with reflink).
FICLONE = 0x40049409
# Errors meaning "this filesystem or pair of files cannot do that", not a broken copy.
_CLONE_UNSUPPORTED = frozenset(
    {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS}
)
_COPY_RANGE_UNSUPPORTED = frozenset({errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL})
# Bounded so that each syscall returns soon and a read/write fallback stays within memory.
_COPY_CHUNK = 8 * 1024 * 1024
_READ_CHUNK = 1024 * 1024
_SECTOR = 512
# Images hold tenants' data: root only.
_IMAGE_MODE = 0o600
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _new_file(path: Path) -> Iterator[int]:
    """Create `path` exclusively and yield its descriptor; durable if the block succeeds.

    If the block fails, the half-made file is removed: a retry must not find it and take it
    for a finished one. A file that already existed is never ours to remove.
    """
    fd = os.open(path, _CREATE_FLAGS, _IMAGE_MODE)
    try:
        try:
            yield fd
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


_PROC_CHUNK = 65536


def read_proc(path: str) -> bytes:
    """The whole of a procfs or sysfs file, read with plain system calls: these are read
    on the event loop many times per call, and a buffered file object costs more than the
    kernel's work."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, _PROC_CHUNK):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


_DELETED = " (deleted)"


def _kernel_path(path: Path) -> Path:
    """The canonical path of an existing `path`, as the kernel resolved it while opening."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        real = str(Path(f"/proc/self/fd/{fd}").readlink())
    finally:
        os.close(fd)
    if not real.startswith("/") or real.endswith(_DELETED):
        raise FileNotFoundError(errno.ENOENT, "vanished while resolved", str(path))
    return Path(real)


def canonical_sync(path: Path) -> Path:
    """`path` with every symlink resolved, like `Path.resolve()`, in one or two system calls.

    `Path.resolve()` takes an lstat per component (and the GIL back after each); the kernel
    resolves an existing path in one open. A path that does not exist yet resolves as its
    parent does, plus its name: nothing can be a symlink in a part that does not exist.
    Anything else (a dangling symlink, "..") goes the careful way.
    """
    if ".." in path.parts:
        return path.resolve()
    try:
        return _kernel_path(path)
    except FileNotFoundError:
        pass
    except OSError:  # not a directory on the way, no permission: as resolve() sees it
        return path.resolve()
    if os.path.lexists(path) or path.parent == path:
        return path.resolve()
    return canonical_sync(path.parent) / path.name


def holds_data_sync(path: Path) -> bool:
    """Whether `path` has any data, as opposed to only holes (or unwritten preallocation).

    A filesystem without SEEK_DATA reports the whole file as data: the careful answer.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no data at or after offset 0
            return False
        raise
    finally:
        os.close(fd)
    return True


def ensure_dir_sync(path: Path) -> bool:
    """Create `path` as a directory (and its parents); False when it already is one."""
    if path.is_dir():
        return False
    if path.exists():
        raise HostConflict(f"{path} exists and is not a directory")
    path.mkdir(mode=0o750, parents=True)
    return True


def ensure_file_sync(path: Path) -> bool:
    """Create `path` as an empty file to bind a device onto; False when one exists."""
    if path.is_dir():
        raise HostConflict(f"{path} is a directory; a block volume needs a file target")
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    return True


def remove_empty_sync(path: Path) -> None:
    """Remove an empty directory or an empty plain file; gone is fine.

    A file with content raises ENOTEMPTY: the files this removes (block targets) are empty
    ones we made, so one with content is not ours.
    """
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        elif path.is_symlink() or path.stat().st_size == 0:
            path.unlink()
        else:
            raise OSError(errno.ENOTEMPTY, "not empty", str(path))


def _require_size(size: int) -> None:
    if size < 0:
        raise ValueError(f"size must not be negative: {size}")


def create_sparse_sync(path: Path, size: int, *, preallocate: bool = False) -> None:
    """Create a new image of `size` bytes; `preallocate` reserves its blocks up front."""
    _require_size(size)
    with _new_file(path) as fd:
        os.ftruncate(fd, size)
        if preallocate and size:
            os.posix_fallocate(fd, 0, size)


async def create_sparse(
    workers: WorkerPool, path: Path, size: int, *, preallocate: bool = False
) -> None:
    await workers.run_sync(lambda: create_sparse_sync(path, size, preallocate=preallocate))


def grow_file_sync(path: Path, size: int, *, preallocate: bool = False) -> None:
    """Extend `path` to `size` bytes; a file that is already as large is left alone."""
    _require_size(size)
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        current = os.fstat(fd).st_size
        if size <= current:
            return
        if preallocate:
            os.posix_fallocate(fd, current, size - current)
        else:
            os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


async def grow_file(
    workers: WorkerPool, path: Path, size: int, *, preallocate: bool = False
) -> None:
    await workers.run_sync(lambda: grow_file_sync(path, size, preallocate=preallocate))


def allocate_sync(path: Path, size: int) -> None:
    """Reserve every block of `path` up to `size`, holes included; data is kept."""
    _require_size(size)
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.posix_fallocate(fd, 0, size)
        os.fsync(fd)
    finally:
        os.close(fd)


async def allocate(workers: WorkerPool, path: Path, size: int) -> None:
    await workers.run_sync(allocate_sync, path, size)


def _try_reflink(src_fd: int, dst_fd: int) -> bool:
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as exc:
        if exc.errno in _CLONE_UNSUPPORTED:
            return False
        raise
    return True


def _data_ranges(fd: int, length: int) -> Iterator[tuple[int, int]]:
    """The (start, end) byte ranges of `fd` that hold data; holes are skipped."""
    offset = 0
    while offset < length:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole up to the end of the file
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), length)
        if start >= end:
            return
        yield start, end
        offset = end


def _read_write(src_fd: int, dst_fd: int, count: int, offset: int) -> int:
    data = os.pread(src_fd, min(count, _READ_CHUNK), offset)
    view = memoryview(data)
    while view:
        written = os.pwrite(dst_fd, view, offset + len(data) - len(view))
        view = view[written:]
    return len(data)


def _copy_range(src_fd: int, dst_fd: int, start: int, end: int) -> None:
    offset = start
    while offset < end:
        count = min(end - offset, _COPY_CHUNK)
        try:
            copied = os.copy_file_range(src_fd, dst_fd, count, offset, offset)
        except OSError as exc:
            if exc.errno not in _COPY_RANGE_UNSUPPORTED:
                raise
            copied = _read_write(src_fd, dst_fd, count, offset)
        if copied == 0:
            raise OSError(errno.EIO, f"source ended at {offset} while copying up to {end}")
        offset += copied


def _sparse_copy(src_fd: int, dst_fd: int, length: int) -> None:
    # Sizing the copy first keeps every range that is never written a hole.
    os.ftruncate(dst_fd, length)
    for start, end in _data_ranges(src_fd, length):
        _copy_range(src_fd, dst_fd, start, end)


def copy_image_sync(src: Path, dst: Path, *, size: int | None = None) -> CopyMethod:
    """Copy `src` to a new file `dst` (at least `size` bytes) and say how it was copied."""
    src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        length = os.fstat(src_fd).st_size
        if size is not None and size < length:
            raise ValueError(f"cannot copy {length} bytes of {src} into {size} bytes")
        with _new_file(dst) as dst_fd:
            method: CopyMethod = "reflink"
            if not _try_reflink(src_fd, dst_fd):
                _sparse_copy(src_fd, dst_fd, length)
                method = "sparse-copy"
            if size is not None and size > length:
                os.ftruncate(dst_fd, size)
    finally:
        os.close(src_fd)
    return method


async def copy_image(
    workers: WorkerPool, src: Path, dst: Path, *, size: int | None = None
) -> CopyMethod:
    return await workers.run_sync(lambda: copy_image_sync(src, dst, size=size))


def remove_file_sync(path: Path) -> None:
    """Remove `path` durably; a missing file (or directory) counts as removed."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    # Still synced when the file was already gone: a crashed earlier try may not have been.
    with contextlib.suppress(FileNotFoundError):
        _fsync_dir(path.parent)


async def remove_file(workers: WorkerPool, path: Path) -> None:
    await workers.run_sync(remove_file_sync, path)


def allocated_bytes(path: Path) -> int:
    return path.stat().st_blocks * _SECTOR


def allocated_per_image(directories: Iterable[Path]) -> dict[str, int]:
    """Bytes each `*.img` file in `directories` holds on disk, by path (one stat each)."""
    found: dict[str, int] = {}
    for directory in directories:
        with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.endswith(".img"):
                    with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                        found[entry.path] = entry.stat(follow_symlinks=False).st_blocks * _SECTOR
    return found


def file_size(path: Path) -> int:
    return path.stat().st_size


def filesystem_space(path: Path) -> tuple[int, int]:
    """Total and available bytes of the filesystem holding `path` (available: for non-root)."""
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
