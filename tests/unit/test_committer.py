"""The store thread's group commit: jobs queued together commit together, each undone alone."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
from typing import TYPE_CHECKING, Any

import pytest

from aiocsi.state.committer import Committer, CommitterStatistics

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


class CountingConnection(sqlite3.Connection):
    """Counts the transactions the committer begins and commits on it."""

    begun = 0
    committed = 0

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        cursor = super().execute(sql, *args)
        if sql == "BEGIN":
            self.begun += 1
        elif sql == "COMMIT":
            self.committed += 1
        return cursor


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(
        path, check_same_thread=False, isolation_level=None, factory=CountingConnection
    )
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


async def _held(committer: Committer, jobs: list[Callable[[sqlite3.Connection], None]]) -> None:
    """Queue `jobs` while a first job holds the store thread, then let them all run."""
    running, gate = threading.Event(), threading.Event()

    def hold(_: sqlite3.Connection) -> None:
        running.set()
        gate.wait(10)

    held = asyncio.ensure_future(committer.run(hold))
    # Else the queued jobs might join the holding job's batch.
    assert await asyncio.to_thread(running.wait, 10)
    waiting = asyncio.gather(*(committer.run(job) for job in jobs), return_exceptions=True)
    await asyncio.sleep(0)  # every job's task has run up to its put
    assert committer.statistics().queued == len(jobs)
    gate.set()
    await held
    await waiting


async def test_jobs_queued_together_share_a_commit(tmp_path: Path) -> None:
    path = tmp_path / "db"
    connections: list[CountingConnection] = []

    def connect() -> sqlite3.Connection:
        db = _connect(path)
        assert isinstance(db, CountingConnection)
        connections.append(db)
        return db

    committer = Committer(connect, name="test-store")
    observed: list[tuple[float, int]] = []
    committer.observer = lambda seconds, size: observed.append((seconds, size))
    await committer.start()
    try:
        [db] = connections
        before = db.committed
        keys = [f"k{i}" for i in range(50)]
        await _held(committer, [_insert(key) for key in keys])
        commits = db.committed - before
        stats = committer.statistics()
    finally:
        await committer.stop()
    assert _keys(path) == sorted(keys)
    # The holding job is a transaction of its own; the 50 queued behind it are one or two.
    assert commits < len(keys) / 10
    assert db.begun == db.committed
    assert stats == CommitterStatistics(
        commits=commits,
        jobs=1 + len(keys),
        last_batch=stats.last_batch,
        max_batch=stats.max_batch,
        commit_seconds=stats.commit_seconds,
    )
    assert stats.max_batch >= len(keys) / 2
    assert stats.commit_seconds > 0
    assert len(observed) == commits
    assert sum(size for _, size in observed) == 1 + len(keys)
    assert max(size for _, size in observed) == stats.max_batch
    assert all(seconds > 0 for seconds, _ in observed)


async def test_statistics_count_failures_and_an_observer_that_raises_breaks_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db"
    committer = Committer(lambda: _connect(path), name="test-store")

    def observer(seconds: float, size: int) -> None:
        raise RuntimeError(f"metrics are down ({seconds}, {size})")

    committer.observer = observer
    await committer.start()
    try:
        await committer.run(_insert("a"))
        with pytest.raises(ValueError, match="bad-alone"):
            await committer.run(_insert("bad-alone"))
        await _held(committer, [_insert("b"), _insert("bad-in-batch"), _insert("c")])
        await committer.run(lambda db: db.execute("SELECT 1").fetchall(), transaction=False)
        stats = committer.statistics()
    finally:
        await committer.stop()
    assert _keys(path) == ["a", "b", "c"]
    # a; bad-alone (rolled back, no commit); the holding job; the batch of three.
    assert (stats.commits, stats.failed_commits) == (3, 0)
    assert (stats.jobs, stats.failed_jobs, stats.reads) == (6, 2, 1)
    assert (stats.last_batch, stats.max_batch, stats.queued) == (3, 3, 0)
    assert stats.observer_errors == stats.commits
