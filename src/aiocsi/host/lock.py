"""An exclusive lock on the pool, so two drivers never reconcile the same pool."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class PoolLocked(Exception):
    """Another process holds the pool."""


class PoolLock:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PoolLocked(
                f"another aiocsi process is using the pool ({self._path}); run one driver per pool"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
