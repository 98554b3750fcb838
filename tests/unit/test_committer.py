"""The store thread's group commit: jobs queued together commit together, each undone alone."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
from typing import TYPE_CHECKING

import pytest

from aiocsi.state.committer import Committer

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY)")
    return db


def _insert(key: str) -> Callable[[sqlite3.Connection], None]:
    def job(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO t (k) VALUES (?)", (key,))
        if key.startswith("bad"):
            raise ValueError(f"refused {key}")

    return job


def _note(seen: list[str], key: str, _: object) -> None:
    seen.append(key)


def _keys(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return sorted(row[0] for row in db.execute("SELECT k FROM t"))


async def test_a_failing_job_is_undone_alone_and_mirrors_follow_commit_order(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db"
    committer = Committer(lambda: _connect(path), name="test-store")
    await committer.start()
    seen: list[str] = []
    try:
        # A first job holds the store thread until the rest are queued: they commit as one
        # batch.
        gate = threading.Event()
        held = asyncio.ensure_future(committer.run(lambda _: gate.wait(10)))
        keys = ["a", "bad-1", "b", "c", "bad-2", "d"]
        calls = [
            committer.run(_insert(key), then=functools.partial(_note, seen, key)) for key in keys
        ]
        waiting = asyncio.gather(*calls, return_exceptions=True)
        await asyncio.sleep(0.05)
        gate.set()
        await held
        results = await waiting
        failed = [key for key, result in zip(keys, results, strict=True) if result is not None]
        assert failed == ["bad-1", "bad-2"]
        assert all(isinstance(results[keys.index(key)], ValueError) for key in failed)
        # A job alone in its commit is rolled back alone too.
        with pytest.raises(ValueError, match="bad-alone"):
            await committer.run(_insert("bad-alone"))
        await committer.run(_insert("e"))
        # A constraint failure is a job's failure, not the batch's.
        with pytest.raises(sqlite3.IntegrityError):
            await committer.run(_insert("a"))
    finally:
        await committer.stop()
    assert seen == ["a", "b", "c", "d"]
    assert _keys(path) == ["a", "b", "c", "d", "e"]
