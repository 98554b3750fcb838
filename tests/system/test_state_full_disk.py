"""The state database on a pool filesystem that fills up: refused writes, nothing kept.

A small ext4 filesystem (a sparse image on a loop device, mounted under the test's
directory) holds the pool; a file of the test's own fills it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import sqlite3
import subprocess
from typing import TYPE_CHECKING

import pytest

from aiocsi.errors import ResourceExhausted
from aiocsi.models import Publication, PublicationKind, Volume, VolumeState
from aiocsi.state import space
from aiocsi.state.store import DB_NAME, PoolFull, Store

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

MiB = 1024 * 1024


@pytest.fixture
def small_pool(workdir: Path) -> Iterator[Path]:
    """A pool directory on an 8 MiB ext4 filesystem of its own, without reserved blocks
    (root could use them: the filler would not fill the filesystem for us)."""
    image, mount_point = workdir / "fs.img", workdir / "fs"
    with image.open("wb") as f:
        f.truncate(8 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
    mount_point.mkdir()
    device = subprocess.run(
        ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        subprocess.run(["mount", "-t", "ext4", device, str(mount_point)], check=True)
        try:
            pool = mount_point / "pool"
            pool.mkdir()
            yield pool
        finally:
            subprocess.run(["umount", str(mount_point)], check=True)
    finally:
        subprocess.run(["losetup", "-d", device], check=True)


def fill(path: Path) -> int:
    """Write to `path` until its filesystem has no block left; the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for chunk in (MiB, 4096, 512):
            block = b"\0" * chunk
            with contextlib.suppress(OSError):
                while True:
                    written += os.write(fd, block)
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
    return written


def volume(n: int, parameters: dict[str, str] | None = None) -> Volume:
    return Volume(
        id=f"vol-{n}",
        name=f"pvc-{n}",
        capacity_bytes=MiB,
        state=VolumeState.READY,
        node_id="node",
        parameters=parameters or {},
        created_at=1.0,
    )


async def durable_volumes(store: Store) -> list[Volume]:
    """What the database itself holds (the mirror answers `all_volumes`)."""
    return await store.list_volumes()


async def integrity(store: Store) -> list[str]:
    found = await store.committer.run(
        lambda db: db.execute("PRAGMA integrity_check").fetchall(), transaction=False
    )
    return [row[0] for row in found]


def refused(exc: BaseException, pool: Path) -> None:
    assert isinstance(exc, PoolFull)
    assert isinstance(exc, ResourceExhausted)
    assert f"the pool filesystem at {pool} is full" in str(exc)


BIG = {"padding": "x" * 16 * 1024}
STAGE = Publication("vol-0", PublicationKind.STAGE, "/staging/vol-0", "node")


async def first_refused_insert(store: Store, pool: Path) -> int:
    """Insert volumes until one is refused; its number. Writes may still land in WAL
    blocks already allocated for a while: soon one needs a new block."""
    for n in range(3, 200):
        before = store.all_volumes()
        try:
            await store.insert_volume(volume(n, BIG))
        except ResourceExhausted as exc:
            refused(exc, pool)
            assert store.all_volumes() == before
            assert store.get_volume(f"vol-{n}") is None
            assert store.get_volume_by_name(f"pvc-{n}") is None
            return n
    pytest.fail("200 writes of 16 KiB fitted on a full 8 MiB filesystem")


async def every_write_refused(store: Store, pool: Path) -> None:
    """Each kind of write is refused the same way; the mirror keeps what is durable."""
    ready = store.all_volumes()
    with pytest.raises(PoolFull) as change:
        await store.set_mutable_parameters("vol-1", BIG)
    refused(change.value, pool)
    with pytest.raises(PoolFull):
        await store.add_publication(dataclasses.replace(STAGE, volume_id="vol-1"))
    assert store.all_volumes() == ready
    assert store.publications() == [STAGE]
    assert await durable_volumes(store) == ready
    assert await integrity(store) == ["ok"]
    # An I/O error on a full filesystem (how SQLite reports EDQUOT) is found to be space.
    refused(space.translate(pool, io_error()), pool)
    assert store.statistics().failed_commits >= 3


def io_error() -> sqlite3.OperationalError:
    error = sqlite3.OperationalError("disk I/O error")
    error.sqlite_errorcode = sqlite3.SQLITE_IOERR_WRITE
    return error


async def test_a_full_pool_refuses_writes_keeps_nothing_and_writes_again_once_freed(
    small_pool: Path,
) -> None:
    pool = small_pool
    store = Store(pool / DB_NAME)
    await store.open()
    try:
        for n in range(3):
            await store.insert_volume(volume(n))
        await store.add_publication(STAGE)
        filler = pool.parent / "filler"
        await asyncio.to_thread(fill, filler)
        assert os.statvfs(pool).f_bavail == 0
        n = await first_refused_insert(store, pool)
        assert await durable_volumes(store) == store.all_volumes()
        await every_write_refused(store, pool)

        filler.unlink()
        # The same store, without a restart: the refused writes go through now.
        again = await store.insert_volume(volume(n, BIG))
        assert store.get_volume(again.id) == again
        await store.set_mutable_parameters("vol-1", BIG)
        await store.add_publication(dataclasses.replace(STAGE, volume_id="vol-1"))
        unrelated = io_error()
        assert space.translate(pool, unrelated) is unrelated
        expected = store.all_volumes()
        assert await durable_volumes(store) == expected
        assert await integrity(store) == ["ok"]
    finally:
        await store.close()
    assert {f.name for f in pool.iterdir()} <= {DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"}

    reopened = Store(pool / DB_NAME)
    await reopened.open()
    try:
        assert reopened.all_volumes() == expected
        assert reopened.get_volume("vol-1") == store.get_volume("vol-1")
        assert len(reopened.publications()) == 2
        assert await integrity(reopened) == ["ok"]
    finally:
        await reopened.close()


async def test_a_store_cannot_be_created_on_a_full_pool_and_says_why(small_pool: Path) -> None:
    await asyncio.to_thread(fill, small_pool.parent / "filler")
    store = Store(small_pool / DB_NAME)
    with pytest.raises(ResourceExhausted) as exc:
        await store.open()
    refused(exc.value, small_pool)
    assert space.space_shortage(small_pool) == (f"{os.strerror(errno.ENOSPC)} (ENOSPC)")
