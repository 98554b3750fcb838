"""A state database on a full filesystem: which SQLite errors mean "no space", and saying so.

SQLite reports a write that hit ENOSPC as SQLITE_FULL ("database or disk is full") and
rolls the transaction back itself; a write, fsync or truncate that failed with any other
errno (EDQUOT among them) comes back as SQLITE_IOERR_WRITE, _FSYNC or _TRUNCATE, and
Python's sqlite3 does not expose the errno. For those the pool filesystem is asked
directly: if it cannot allocate a few pages for us either, the cause was space.

What a full filesystem does to the files, in WAL mode: a commit appends its pages to the
-wal file, so a commit that cannot append fails whole and leaves no valid frame behind;
a checkpoint that cannot grow the main file leaves the WAL in place (its commits stay
durable there) and is tried again after a later commit or on close. The -shm index is
32 KiB, made on open, and grows only about every 4,000 WAL frames. Once space is freed,
the same connection writes again.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from typing import TYPE_CHECKING

from aiocsi.errors import ResourceExhausted

if TYPE_CHECKING:
    from pathlib import Path

SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

# I/O errors SQLite gives for failures to allocate: they may be ENOSPC or EDQUOT.
_ALLOCATING_IOERRS = frozenset(
    {
        sqlite3.SQLITE_IOERR_WRITE,
        sqlite3.SQLITE_IOERR_FSYNC,
        sqlite3.SQLITE_IOERR_DIR_FSYNC,
        sqlite3.SQLITE_IOERR_TRUNCATE,
        sqlite3.SQLITE_IOERR_SHMSIZE,
    }
)

# What the probe asks the filesystem for: about a batch of WAL frames.
PROBE_BYTES = 256 * 1024


class PoolFull(ResourceExhausted):
    """The pool filesystem had no room for a write to the state database."""


def translate(directory: Path, exc: sqlite3.Error) -> BaseException:
    """`PoolFull` naming `directory` if `exc` was for want of space, else `exc` itself.

    Runs in the store thread: it may touch the filesystem.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return exc
    if code & 0xFF == sqlite3.SQLITE_FULL:
        reason = str(exc)
    elif code in _ALLOCATING_IOERRS and (shortage := space_shortage(directory)) is not None:
        reason = f"{exc} ({shortage})"
    else:
        return exc
    full = PoolFull(
        f"the pool filesystem at {directory} is full: the state database could not record "
        f"the change ({reason}); nothing of it was kept; free space in the pool and retry"
    )
    full.__cause__ = exc
    return full


def space_shortage(directory: Path) -> str | None:
    """Why `directory`'s filesystem cannot give us PROBE_BYTES now, or None if it can.

    Allocates them in an unnamed file (O_TMPFILE: nothing is left behind, even on a crash),
    so a quota counts as it would for the database's own files.
    """
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o600)
    except OSError as exc:
        if exc.errno in SPACE_ERRNOS:
            return _describe(exc.errno)
        return _statvfs_shortage(directory)  # no O_TMPFILE here: the free count must do
    try:
        os.posix_fallocate(fd, 0, PROBE_BYTES)
    except OSError as exc:
        if exc.errno in SPACE_ERRNOS:
            return _describe(exc.errno)
        if exc.errno == errno.EOPNOTSUPP:
            return _statvfs_shortage(directory)
        return None
    finally:
        os.close(fd)
    return None


def _statvfs_shortage(directory: Path) -> str | None:
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    if st.f_bavail * st.f_frsize < PROBE_BYTES:
        return f"{st.f_bavail * st.f_frsize} bytes free"
    return None


def _describe(number: int) -> str:
    return f"{os.strerror(number)} ({errno.errorcode[number]})"
