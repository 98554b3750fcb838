"""SQLite store for volumes, snapshots and publications.

One connection, WAL and synchronous=FULL, owned by one thread that commits the writes
queued meanwhile together (state/committer.py), so the event loop never waits on disk,
SQLite sees one writer, and concurrent operations share fsyncs.

What "missing" means, for every method: a look-up of an unknown id or name returns None;
a change (state, size, parameters, readiness) or removal of an unknown row changes nothing
and raises nothing, so a retry after a crash need not look first; an insert of an id or
name that exists raises `sqlite3.IntegrityError` and records nothing. Every write raises
`PoolFull` (a ResourceExhausted) when the pool filesystem has no room for it, and then
nothing of it is kept, on disk or in the mirror.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, TypeVar

from aiocsi.state import rows, space, sql
from aiocsi.state.committer import Committer, CommitterStatistics
from aiocsi.state.database import SchemaTooNew, open_database
from aiocsi.state.mirror import Mirror
from aiocsi.state.space import PoolFull
from aiocsi.state.sql import Budget, OverBudget, check_budget

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable, Iterable
    from pathlib import Path

    from aiocsi.models import (
        GroupSnapshot,
        Publication,
        PublicationKind,
        Snapshot,
        Volume,
        VolumeState,
    )

__all__ = [
    "DB_NAME",
    "Budget",
    "OverBudget",
    "PoolFull",
    "SchemaTooNew",
    "Store",
]

T = TypeVar("T")
DB_NAME = "aiocsi.db"


class Store:
    """Durable state with an in-memory mirror of volumes and publications.

    This process is the database's only writer (the pool lock sees to that), so reads of
    the hot tables are answered from memory, without a coroutine: every RPC looks its
    volume up several times, and each look-up through a worker thread cost more than the
    RPC's own work. Writes go to SQLite first and reach the mirror only once durable.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mirror = Mirror()
        self.committer = Committer(
            self._connect,
            name="aiocsi-store",
            translate=functools.partial(space.translate, path.parent),
        )

    def statistics(self) -> CommitterStatistics:
        """The committer's counts (commits, batch sizes, time in commits, queue depth)."""
        return self.committer.statistics()

    # -- plumbing -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """In the store thread: open, migrate and load the mirror."""
        db = open_database(self.path)
        try:
            self._mirror.load(db)
        except BaseException:
            db.close()
            raise
        return db

    async def open(self) -> None:
        """Open (or create) and migrate the database; raises `SchemaTooNew` for a database
        of a newer aiocsi, `PoolFull` if there is no room to create or migrate it."""
        await self.committer.start()

    async def close(self) -> None:
        """Finish the queued writes and close; closing a closed store does nothing."""
        await self.committer.stop()

    async def _call(
        self, fn: Callable[[sqlite3.Connection], T], then: Callable[[T], object] | None = None
    ) -> T:
        """Run `fn(db)` in a committed batch; `then(result)` updates the mirror once durable."""
        return await self.committer.run(fn, then=then)

    async def _write(
        self, statement: str, args: Iterable[object] = (), then: Callable[[], None] | None = None
    ) -> int:
        def write(db: sqlite3.Connection) -> int:
            return db.execute(statement, tuple(args)).rowcount

        return await self._call(write, None if then is None else lambda _: then())

    async def _rows(self, query: str, args: Iterable[object] = ()) -> list[sqlite3.Row]:
        return await self.committer.run(
            lambda db: db.execute(query, tuple(args)).fetchall(), transaction=False
        )

    async def _row(self, query: str, args: Iterable[object] = ()) -> sqlite3.Row | None:
        found = await self._rows(query, args)
        return found[0] if found else None

    # -- volumes --------------------------------------------------------------------------

    async def insert_volume(self, v: Volume, *, budget: Budget = None) -> Volume:
        """Record a new volume and return it with its `seq`. With `budget`, only if it keeps
        the pool within it (else `OverBudget`); an id or name taken: `IntegrityError`."""

        def insert(db: sqlite3.Connection) -> Volume:
            check_budget(db, v.capacity_bytes, budget)
            cur = db.execute(sql.INSERT_VOLUME, rows.volume_columns(v))
            return rows.volume_from_row(db.execute(sql.VOLUME_BY_SEQ, (cur.lastrowid,)).fetchone())

        return await self._call(insert, then=self._mirror.remember)

    def get_volume(self, volume_id: str) -> Volume | None:
        """The volume with this id, in any state; None if there is none."""
        return self._mirror.volume(volume_id)

    def get_volume_by_name(self, name: str) -> Volume | None:
        """The volume with this name, in any state; None if there is none."""
        return self._mirror.volume_named(name)

    async def set_volume_state(self, volume_id: str, state: VolumeState) -> None:
        """Set a volume's state; an unknown id changes nothing."""
        await self._write(
            sql.SET_VOLUME_STATE,
            (state.value, volume_id),
            then=lambda: self._mirror.change(
                volume_id, lambda v: dataclasses.replace(v, state=state)
            ),
        )

    async def set_volume_capacity(
        self, volume_id: str, capacity: int, *, budget: Budget = None
    ) -> None:
        """Record a new size; with `budget`, only if the growth keeps the pool within it
        (else `OverBudget`). An unknown id changes nothing."""

        def update(db: sqlite3.Connection) -> None:
            row = db.execute(sql.VOLUME_CAPACITY, (volume_id,)).fetchone()
            if row is not None:
                check_budget(db, capacity - int(row[0]), budget)
            db.execute(sql.SET_VOLUME_CAPACITY, (capacity, volume_id))

        await self._call(
            update,
            then=lambda _: self._mirror.change(
                volume_id, lambda v: dataclasses.replace(v, capacity_bytes=capacity)
            ),
        )

    async def set_mutable_parameters(self, volume_id: str, params: dict[str, str]) -> None:
        """Replace a volume's mutable parameters; an unknown id changes nothing."""
        await self._write(
            sql.SET_MUTABLE_PARAMETERS,
            (rows.parameters_json(params), volume_id),
            then=lambda: self._mirror.change(
                volume_id, lambda v: dataclasses.replace(v, mutable_parameters=dict(params))
            ),
        )

    async def delete_volume(self, volume_id: str) -> None:
        """Forget a volume (its publications stay until removed); an unknown id: no-op."""
        await self._write(
            sql.DELETE_VOLUME, (volume_id,), then=lambda: self._mirror.forget(volume_id)
        )

    async def list_volumes(self, after_seq: int = 0, limit: int = -1) -> list[Volume]:
        """Ready volumes with `seq` above `after_seq`, in `seq` order, at most `limit`
        (-1: all); an empty list when there are none."""
        found = await self._rows(sql.READY_VOLUMES_PAGE, (after_seq, limit))
        return [rows.volume_from_row(r) for r in found]

    def all_volumes(self) -> list[Volume]:
        """Every volume, in any state, in `seq` order."""
        return self._mirror.volumes()

    async def provisioned_bytes(self) -> int:
        """Bytes promised to every volume and snapshot image, whatever its state."""
        row = await self._row(sql.PROVISIONED)
        return int(row[0]) if row else 0

    async def last_seq(self, table: str) -> int:
        """The highest `seq` ever given out in `table` (0: none yet); deleted rows count.
        A table other than "volumes" or "snapshots" raises ValueError."""
        if table not in sql.SEQUENCED_TABLES:
            raise ValueError(f"no sequence for table {table!r}")
        row = await self._row(sql.LAST_SEQ, (table,))
        return int(row[0]) if row else 0

    # -- snapshots ------------------------------------------------------------------------

    async def insert_snapshot(self, s: Snapshot, *, budget: Budget = None) -> Snapshot:
        """Record a new snapshot and return it with its `seq`. With `budget`, only if it
        keeps the pool within it (else `OverBudget`); an id or name taken: `IntegrityError`."""

        def insert(db: sqlite3.Connection) -> Snapshot:
            check_budget(db, s.size_bytes, budget)
            cur = db.execute(sql.INSERT_SNAPSHOT, rows.snapshot_columns(s))
            row = db.execute(sql.SNAPSHOT_BY_SEQ, (cur.lastrowid,)).fetchone()
            return rows.snapshot_from_row(row)

        return await self._call(insert)

    async def get_snapshot(self, snapshot_id: str) -> Snapshot | None:
        """The snapshot with this id, ready or not; None if there is none."""
        row = await self._row(sql.SNAPSHOT_BY_ID, (snapshot_id,))
        return rows.snapshot_from_row(row) if row else None

    async def get_snapshot_by_name(self, name: str) -> Snapshot | None:
        """The snapshot with this name, ready or not; None if there is none."""
        row = await self._row(sql.SNAPSHOT_BY_NAME, (name,))
        return rows.snapshot_from_row(row) if row else None

    async def set_snapshot_ready(self, snapshot_id: str, ready: bool = True) -> None:
        """Mark a snapshot usable, or (before its image goes) not usable any more; an
        unknown id changes nothing."""
        await self._write(sql.SET_SNAPSHOT_READY, (int(ready), snapshot_id))

    async def delete_snapshot(self, snapshot_id: str) -> None:
        """Forget a snapshot; an unknown id changes nothing."""
        await self._write(sql.DELETE_SNAPSHOT, (snapshot_id,))

    async def list_snapshots(
        self,
        after_seq: int = 0,
        limit: int = -1,
        *,
        source_volume_id: str = "",
        snapshot_id: str = "",
    ) -> list[Snapshot]:
        """Ready snapshots with `seq` above `after_seq`, in `seq` order, at most `limit`
        (-1: all), of one source volume and/or with one id if given (""; any); an unknown
        source or id gives an empty list."""
        query = sql.ready_snapshots_page(by_source=bool(source_volume_id), by_id=bool(snapshot_id))
        args = [after_seq, *(x for x in (source_volume_id, snapshot_id) if x), limit]
        found = await self._rows(query, args)
        return [rows.snapshot_from_row(r) for r in found]

    async def all_snapshots(self) -> list[Snapshot]:
        """Every snapshot, ready or not, in `seq` order (made in the store thread: at
        10,000 snapshots, on the loop, that took tens of milliseconds)."""
        return await self._call_read(
            lambda db: [rows.snapshot_from_row(r) for r in db.execute(sql.ALL_SNAPSHOTS)]
        )

    # -- group snapshots ------------------------------------------------------------------

    async def insert_group(self, g: GroupSnapshot, *, budget: Budget = None) -> GroupSnapshot:
        """Record a group and its members (not ready) in one transaction and return it with
        its `seq`; with `budget`, only if all the members' images keep the pool within it
        (else `OverBudget`); an id or name taken: `IntegrityError`, nothing recorded."""

        def insert(db: sqlite3.Connection) -> GroupSnapshot:
            check_budget(db, sum(m.size_bytes for m in g.members), budget)
            cur = db.execute(sql.INSERT_GROUP, rows.group_columns(g))
            for member in g.members:
                db.execute(sql.INSERT_SNAPSHOT, rows.snapshot_columns(member))
            inserted = _group(db, db.execute(sql.GROUP_BY_SEQ, (cur.lastrowid,)).fetchone())
            assert inserted is not None  # noqa: S101 -- just inserted, in this transaction
            return inserted

        return await self._call(insert)

    async def get_group(self, group_id: str) -> GroupSnapshot | None:
        """The group with this id and its members, ready or not; None if there is none."""
        return await self._call_read(
            lambda db: _group(db, db.execute(sql.GROUP_BY_ID, (group_id,)).fetchone())
        )

    async def get_group_by_name(self, name: str) -> GroupSnapshot | None:
        """The group with this name and its members, ready or not; None if there is none."""
        return await self._call_read(
            lambda db: _group(db, db.execute(sql.GROUP_BY_NAME, (name,)).fetchone())
        )

    async def all_groups(self) -> list[GroupSnapshot]:
        """Every group with its members, ready or not, in `seq` order."""
        return await self._call_read(
            lambda db: [g for r in db.execute(sql.ALL_GROUPS).fetchall() if (g := _group(db, r))]
        )

    async def set_group_ready(self, group_id: str, ready: bool = True) -> None:
        """Mark a group and all its members usable (or not) in one transaction; an unknown
        id changes nothing."""

        def update(db: sqlite3.Connection) -> None:
            db.execute(sql.SET_GROUP_MEMBERS_READY, (int(ready), group_id))
            db.execute(sql.SET_GROUP_READY, (int(ready), group_id))

        await self._call(update)

    async def delete_group(self, group_id: str) -> None:
        """Forget a group and its members' records; an unknown id changes nothing."""

        def delete(db: sqlite3.Connection) -> None:
            db.execute(sql.DELETE_GROUP_MEMBERS, (group_id,))
            db.execute(sql.DELETE_GROUP, (group_id,))

        await self._call(delete)

    async def _call_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self.committer.run(fn, transaction=False)

    # -- publications ---------------------------------------------------------------------

    async def add_publication(self, p: Publication) -> None:
        """Record a publication, replacing one with the same volume, kind and path; the
        volume id is not checked against the volumes table."""
        await self._write(
            sql.UPSERT_PUBLICATION,
            rows.publication_columns(p),
            then=lambda: self._mirror.add_publication(p),
        )

    async def remove_publication(self, volume_id: str, kind: PublicationKind, path: str) -> None:
        """Forget a publication; one that is not recorded changes nothing."""
        await self._write(
            sql.DELETE_PUBLICATION,
            (volume_id, kind.value, path),
            then=lambda: self._mirror.forget_publication(volume_id, kind, path),
        )

    def publications(
        self, volume_id: str | None = None, kind: PublicationKind | None = None
    ) -> list[Publication]:
        """Publications of one volume (None: of all) and of one kind (None: any), oldest
        first; an unknown volume has none."""
        return self._mirror.publications(volume_id, kind)

    def publications_near(self, path: str) -> list[Publication]:
        """Publications (of any volume and kind) at `path`, at a directory above it, or
        beneath it: what a new mount at `path` could collide with, without a scan."""
        return self._mirror.publications_near(path)


def _group(db: sqlite3.Connection, row: sqlite3.Row | None) -> GroupSnapshot | None:
    if row is None:
        return None
    members = db.execute(sql.SNAPSHOTS_OF_GROUP, (row["id"],)).fetchall()
    return rows.group_from_row(row, tuple(rows.snapshot_from_row(m) for m in members))
