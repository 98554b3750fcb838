"""One thread owns the SQLite connection and commits whatever is queued as one transaction.

Under churn many operations record a state change at the same moment. A limiter of one
around a worker-thread call made each of them wait for every earlier write's fsync plus
two thread hand-offs; here the writes that queue up while one commit is on disk go to
disk together in the next commit (group commit), and the event loop is woken once per
commit, not once per statement.

Each job runs inside its own SAVEPOINT, so a job that raises (a budget refusal, a
constraint) is undone alone and the rest of its batch still commits. A job's `then`
callback runs on the event loop once the commit is durable and before its caller
resumes, so an in-memory mirror updated there never runs ahead of the database and is
updated even when the caller was cancelled meanwhile.

A transaction that fails as a whole (SQLite rolled it back: a full disk, an I/O error)
fails every job in it with the same error, passed through `translate` first, and runs no
`then`: nothing of it reached the database, so nothing of it reaches a mirror.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aiocsi.threads import settle

T = TypeVar("T")

# More than this many jobs in one transaction gain nothing and delay the first one's answer.
MAX_BATCH = 256

# Called in the store thread after each commit with its duration in seconds (BEGIN to
# COMMIT, fsync included) and its number of write jobs.
Observer = Callable[[float, int], None]


@dataclass(frozen=True)
class CommitterStatistics:
    """Counts since the committer started; all cumulative but `queued` and `last_batch`."""

    commits: int = 0  # transactions committed (each one fsync of the WAL)
    failed_commits: int = 0  # transactions that failed whole and were rolled back
    jobs: int = 0  # write jobs run, whatever became of them
    failed_jobs: int = 0  # write jobs that raised, or whose transaction failed
    reads: int = 0  # read-only jobs run
    commit_seconds: float = 0.0  # time spent in committed transactions, BEGIN to COMMIT
    last_batch: int = 0  # write jobs in the latest transaction
    max_batch: int = 0  # write jobs in the largest transaction
    queued: int = 0  # jobs waiting for the store thread when the statistics were taken
    observer_errors: int = 0  # times the observer raised (the commits stood)


@dataclass
class _Job(Generic[T]):
    fn: Callable[[sqlite3.Connection], T]
    future: asyncio.Future[T]
    transaction: bool
    then: Callable[[T], object] | None
    outcome: tuple[bool, Any] = field(default=(False, None))


def _unchanged(exc: sqlite3.Error) -> BaseException:
    return exc


class Committer:
    """Runs jobs against one connection in a dedicated thread, batching them per commit.

    `translate` turns an SQLite error into the one the job's caller sees (in the store
    thread, so it may look at the filesystem). `observer`, if set, is told of each commit.
    """

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        name: str,
        *,
        translate: Callable[[sqlite3.Error], BaseException] = _unchanged,
    ) -> None:
        self._connect = connect
        self._name = name
        self._translate = translate
        self.observer: Observer | None = None
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Replaced whole by the store thread once per batch: a reader never sees half of one.
        self._statistics = CommitterStatistics()

    def statistics(self) -> CommitterStatistics:
        return dataclasses.replace(self._statistics, queued=self._jobs.qsize())

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name=self._name, daemon=True
        )
        self._thread.start()
        try:
            await ready
        except BaseException:
            self._thread = None
            raise

    async def stop(self) -> None:
        """Finish the queued jobs, close the connection and end the thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._jobs.put(None)
        await asyncio.to_thread(thread.join)

    async def run(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        transaction: bool = True,
        then: Callable[[T], object] | None = None,
    ) -> T:
        """Run `fn(db)` in the store thread; with `transaction`, as part of a committed batch."""
        if self._thread is None or self._loop is None:
            raise RuntimeError("store is not open")
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put(_Job(fn, future, transaction, then))
        # The job runs whatever happens to this caller: a cancelled caller stops waiting, and
        # `_finish` leaves its future alone (no shield: that cost a trip through the loop).
        return await future

    # -- the store thread -------------------------------------------------------------------

    def _serve(self, ready: asyncio.Future[None]) -> None:
        try:
            db = self._connect()
        except sqlite3.Error as exc:
            self._deliver_soon(functools.partial(settle, ready, None, self._translate(exc)))
            return
        except BaseException as exc:  # noqa: BLE001 - handed to the opener, who re-raises
            self._deliver_soon(functools.partial(settle, ready, None, exc))
            return
        self._deliver_soon(functools.partial(settle, ready, None, None))
        try:
            while (first := self._jobs.get()) is not None:
                batch, stop = self._drain(first)
                self._run_batch(db, batch)
                if stop:
                    break
        finally:
            db.close()

    def _drain(self, first: _Job[Any]) -> tuple[list[_Job[Any]], bool]:
        batch = [first]
        while len(batch) < MAX_BATCH:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _run_batch(self, db: sqlite3.Connection, batch: list[_Job[Any]]) -> None:
        writes = [job for job in batch if job.transaction]
        if writes:
            self._commit(db, writes)
        # Reads after the commit: none sees less than the writes queued before it.
        for job in batch:
            if not job.transaction:
                job.outcome = _attempt(job.fn, db)
        translated: dict[int, BaseException] = {}  # a failed batch shares one error
        for job in batch:
            ok, value = job.outcome
            if not ok and isinstance(value, sqlite3.Error):
                if id(value) not in translated:
                    translated[id(value)] = self._translate(value)
                job.outcome = (False, translated[id(value)])
        self._count(len(batch) - len(writes))
        self._deliver_soon(functools.partial(_finish, batch))

    def _commit(self, db: sqlite3.Connection, jobs: list[_Job[Any]]) -> None:
        started = time.perf_counter()
        try:
            db.execute("BEGIN")
            if len(jobs) == 1:  # the common case: no savepoint needed to undo it alone
                [job] = jobs
                job.outcome = _attempt(job.fn, db)
                if not job.outcome[0]:
                    _rollback(db, job.outcome[1])
                    self._count_writes(jobs, committed=None)
                    return
            else:
                for job in jobs:
                    db.execute("SAVEPOINT job")
                    job.outcome = _attempt(job.fn, db)
                    if not job.outcome[0]:
                        _check_open(db, job.outcome[1])
                        db.execute("ROLLBACK TO job")
                    db.execute("RELEASE job")
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            # Nothing of this batch is durable: every job in it fails with the reason.
            if db.in_transaction:
                _quietly_rollback(db)
            for job in jobs:
                job.outcome = (False, exc)
            self._count_writes(jobs, committed=False)
            return
        seconds = time.perf_counter() - started
        self._count_writes(jobs, committed=True, seconds=seconds)
        self._observe(seconds, len(jobs))

    def _count_writes(
        self, jobs: list[_Job[Any]], *, committed: bool | None, seconds: float = 0.0
    ) -> None:
        """`committed`: True, False if the transaction failed whole, None if none was kept
        because its one job failed."""
        s = self._statistics
        self._statistics = dataclasses.replace(
            s,
            commits=s.commits + (committed is True),
            failed_commits=s.failed_commits + (committed is False),
            jobs=s.jobs + len(jobs),
            failed_jobs=s.failed_jobs + sum(not job.outcome[0] for job in jobs),
            commit_seconds=s.commit_seconds + seconds,
            last_batch=len(jobs),
            max_batch=max(s.max_batch, len(jobs)),
        )

    def _count(self, reads: int) -> None:
        if reads:
            s = self._statistics
            self._statistics = dataclasses.replace(s, reads=s.reads + reads)

    def _observe(self, seconds: float, size: int) -> None:
        if (observer := self.observer) is None:
            return
        try:
            observer(seconds, size)
        except Exception:  # noqa: BLE001 - metrics must never fail a write that is durable
            s = self._statistics
            self._statistics = dataclasses.replace(s, observer_errors=s.observer_errors + 1)

    def _deliver_soon(self, callback: Callable[[], None]) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(callback)


def _check_open(db: sqlite3.Connection, error: object) -> None:
    """After a job failed: if SQLite rolled the whole transaction back (it does so on a full
    disk), the batch is lost; fail it with the job's error rather than the savepoint's."""
    if isinstance(error, sqlite3.Error) and not db.in_transaction:
        raise error


def _rollback(db: sqlite3.Connection, error: object) -> None:
    _check_open(db, error)
    db.execute("ROLLBACK")


def _quietly_rollback(db: sqlite3.Connection) -> None:
    # The batch already failed with a reason worth reporting; if the rollback fails too,
    # the next BEGIN says so and tries again.
    with contextlib.suppress(sqlite3.Error):
        db.execute("ROLLBACK")


def _attempt(fn: Callable[[sqlite3.Connection], Any], db: sqlite3.Connection) -> tuple[bool, Any]:
    try:
        return True, fn(db)
    except Exception as exc:  # noqa: BLE001 - handed to the caller, who re-raises
        return False, exc


def _finish(batch: list[_Job[Any]]) -> None:
    """On the event loop: update mirrors in commit order, then wake the callers."""
    for job in batch:
        ok, value = job.outcome
        if ok and job.then is not None:
            try:
                job.then(value)
            except Exception as exc:  # noqa: BLE001 - the caller sees it; the batch goes on
                ok, value = False, exc
        if ok:
            settle(job.future, value, None)
        else:
            settle(job.future, None, value)
