"""SQLite's "database or disk is full" from the store: PoolFull, nothing kept, then writes again.

`PRAGMA max_page_count` makes SQLite itself answer SQLITE_FULL, in a batch or alone, with
no filesystem to fill (tests/system/test_state_full_disk.py fills a real one).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from typing import TYPE_CHECKING

import pytest

from aiocsi.errors import ResourceExhausted
from aiocsi.models import Volume, VolumeState
from aiocsi.state import space
from aiocsi.state.store import DB_NAME, PoolFull, Store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

BIG = {"padding": "x" * 64 * 1024}


def volume(n: int, parameters: dict[str, str] | None = None) -> Volume:
    return Volume(
        id=f"vol-{n}",
        name=f"pvc-{n}",
        capacity_bytes=1024,
        state=VolumeState.READY,
        node_id="node",
        parameters=parameters or {},
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(tmp_path / DB_NAME)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def cap_pages(store: Store, extra: int) -> None:
    """Let the database grow by `extra` pages at most."""

    def cap(db: sqlite3.Connection) -> None:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count={pages + extra}")

    await store.committer.run(cap, transaction=False)


async def test_a_full_database_refuses_a_write_and_the_mirror_keeps_what_is_durable(
    store: Store, tmp_path: Path
) -> None:
    await store.insert_volume(volume(1))
    await cap_pages(store, 1)
    with pytest.raises(PoolFull, match=f"the pool filesystem at {tmp_path} is full") as exc:
        await store.insert_volume(volume(2, BIG))
    assert isinstance(exc.value, ResourceExhausted)
    assert isinstance(exc.value.__cause__, sqlite3.OperationalError)
    assert store.get_volume("vol-2") is None
    assert store.get_volume_by_name("pvc-2") is None
    with pytest.raises(PoolFull):
        await store.set_mutable_parameters("vol-1", BIG)
    assert store.all_volumes() == await store.list_volumes()
    [kept] = store.all_volumes()
    assert kept.mutable_parameters == {}

    await cap_pages(store, 1000)
    await store.insert_volume(volume(2, BIG))
    await store.set_mutable_parameters("vol-1", BIG)
    assert store.all_volumes() == await store.list_volumes()
    assert [v.id for v in store.all_volumes()] == ["vol-1", "vol-2"]
    assert store.statistics().failed_jobs == 2


async def test_a_batch_that_sqlite_rolled_back_fails_whole_and_changes_no_mirror(
    store: Store,
) -> None:
    await store.insert_volume(volume(1))
    await cap_pages(store, 1)
    running, gate = threading.Event(), threading.Event()

    def hold(_: sqlite3.Connection) -> None:
        running.set()
        gate.wait(10)

    held = asyncio.ensure_future(store.committer.run(hold))
    assert await asyncio.to_thread(running.wait, 10)
    batch = asyncio.gather(
        store.set_volume_state("vol-1", VolumeState.CREATING),
        store.insert_volume(volume(2, BIG)),
        store.insert_volume(volume(3)),
        return_exceptions=True,
    )
    await asyncio.sleep(0)
    gate.set()
    await held
    results = await batch
    # SQLite ends the whole transaction on SQLITE_FULL: no job of it was kept.
    assert all(isinstance(r, PoolFull) for r in results), results
    assert store.all_volumes() == await store.list_volumes()
    assert [v.id for v in store.all_volumes()] == ["vol-1"]
    assert store.get_volume("vol-1").state is VolumeState.READY  # type: ignore[union-attr]
    stats = store.statistics()
    assert (stats.failed_commits, stats.last_batch) == (1, 3)


async def test_only_space_errors_become_pool_full(tmp_path: Path) -> None:
    integrity = sqlite3.IntegrityError("UNIQUE constraint failed: volumes.name")
    assert space.translate(tmp_path, integrity) is integrity
    # An I/O error where there is room is an I/O error: it stays internal.
    io_error = sqlite3.OperationalError("disk I/O error")
    io_error.sqlite_errorcode = sqlite3.SQLITE_IOERR_WRITE
    assert space.translate(tmp_path, io_error) is io_error
    assert space.space_shortage(tmp_path) is None
    uncoded = sqlite3.OperationalError("no error code")
    assert space.translate(tmp_path, uncoded) is uncoded
