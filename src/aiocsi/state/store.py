"""SQLite store for volumes, snapshots and publications.

One connection, WAL and synchronous=FULL, owned by one thread that commits the writes
queued meanwhile together (state/committer.py), so the event loop never waits on disk,
SQLite sees one writer, and concurrent operations share fsyncs.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from aiocsi.models import (
    AccessMode,
    AccessType,
    Capability,
    ContentSource,
    Publication,
    PublicationKind,
    Snapshot,
    SourceKind,
    Volume,
    VolumeState,
)
from aiocsi.state.committer import Committer
from aiocsi.state.schema import MIGRATIONS, SCHEMA_VERSION

T = TypeVar("T")
DB_NAME = "aiocsi.db"


class SchemaTooNew(Exception):
    """The database was written by a newer aiocsi; refusing to downgrade it."""


class OverBudget(Exception):
    """Recording this many more bytes would provision more than the pool's budget."""

    def __init__(self, provisioned: int, wanted: int, budget: int) -> None:
        self.provisioned = provisioned
        self.wanted = wanted
        self.budget = budget
        super().__init__(f"{provisioned} + {wanted} bytes exceeds the budget of {budget}")


# Every image in the pool, volume or snapshot, counts against its capacity.
_PROVISIONED_SQL = (
    "SELECT (SELECT COALESCE(SUM(capacity_bytes), 0) FROM volumes)"
    " + (SELECT COALESCE(SUM(size_bytes), 0) FROM snapshots)"
)


# A budget in bytes, or how to get it in the store thread (a statvfs: one fewer hand-off).
Budget = int | Callable[[], int] | None


def _check_budget(db: sqlite3.Connection, wanted: int, budget: Budget) -> None:
    """Refuse `wanted` more bytes over `budget`; call inside the write's own thread call,
    so that the check and the write are one step that no other writer can split.
    """
    if budget is None or wanted <= 0:
        return
    if callable(budget):
        budget = budget()
    provisioned = int(db.execute(_PROVISIONED_SQL).fetchone()[0])
    if provisioned + wanted > budget:
        raise OverBudget(provisioned, wanted, budget)


def _volume(row: sqlite3.Row) -> Volume:
    source = (
        ContentSource(SourceKind(row["source_kind"]), row["source_id"])
        if row["source_kind"]
        else None
    )
    return Volume(
        id=row["id"],
        name=row["name"],
        capacity_bytes=row["capacity_bytes"],
        state=VolumeState(row["state"]),
        node_id=row["node_id"],
        parameters=json.loads(row["parameters"]),
        mutable_parameters=json.loads(row["mutable_parameters"]),
        source=source,
        ephemeral=bool(row["ephemeral"]),
        created_at=row["created_at"],
        seq=row["seq"],
    )


def _snapshot(row: sqlite3.Row) -> Snapshot:
    return Snapshot(
        id=row["id"],
        name=row["name"],
        source_volume_id=row["source_volume_id"],
        size_bytes=row["size_bytes"],
        ready=bool(row["ready"]),
        created_at=row["created_at"],
        seq=row["seq"],
    )


def _capability_json(capability: Capability | None) -> str | None:
    return None if capability is None else json.dumps(asdict(capability))


def _capability(text: str | None) -> Capability | None:
    if text is None:
        return None
    raw = json.loads(text)
    return Capability(
        access_type=AccessType(raw["access_type"]),
        access_mode=AccessMode(raw["access_mode"]),
        fs_type=raw["fs_type"],
        mount_flags=tuple(raw["mount_flags"]),
    )


def _publication(row: sqlite3.Row) -> Publication:
    return Publication(
        volume_id=row["volume_id"],
        kind=PublicationKind(row["kind"]),
        path=row["path"],
        node_id=row["node_id"],
        read_only=bool(row["read_only"]),
        capability=_capability(row["capability"]),
    )


_PubKey = tuple[str, PublicationKind, str]  # volume id, kind, path: the table's key


class Store:
    """Durable state with an in-memory mirror of volumes and publications.

    This process is the database's only writer (the pool lock sees to that), so reads of
    the hot tables are answered from memory: every RPC looks its volume up several times,
    and each look-up through a worker thread cost more than the RPC's own work. Writes go
    to SQLite first and reach the mirror only once they are durable.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._committer = Committer(self._connect, name="aiocsi-store")
        self._volumes: dict[str, Volume] = {}
        self._volume_ids: dict[str, str] = {}  # name -> id
        # In insertion order, like rowid; and per volume, as most look-ups ask.
        self._publications: dict[_PubKey, Publication] = {}
        self._by_volume: dict[str, dict[_PubKey, Publication]] = {}

    # -- plumbing -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """In the store thread: open, migrate and load the mirror."""
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self._prepare(db)
        except BaseException:
            db.close()
            raise
        return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{self.path} has schema version {version}; this aiocsi knows {SCHEMA_VERSION}"
            )
        for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
            db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={target};\nCOMMIT;")
        for row in db.execute("SELECT * FROM volumes ORDER BY seq"):
            self._remember(_volume(row))
        for row in db.execute("SELECT * FROM publications ORDER BY rowid"):
            self._append_publication(_publication(row))

    def _remember(self, volume: Volume) -> Volume:
        self._volumes[volume.id] = volume
        self._volume_ids[volume.name] = volume.id
        return volume

    def _update(self, volume_id: str, change: Callable[[Volume], Volume]) -> None:
        if (volume := self._volumes.get(volume_id)) is not None:
            self._volumes[volume_id] = change(volume)

    async def open(self) -> None:
        await self._committer.start()

    async def close(self) -> None:
        await self._committer.stop()

    async def _call(
        self, fn: Callable[[sqlite3.Connection], T], then: Callable[[T], object] | None = None
    ) -> T:
        """Run `fn(db)` in a committed batch; `then(result)` updates the mirror once durable."""
        return await self._committer.run(fn, then=then)

    async def _write(
        self, sql: str, args: Iterable[Any] = (), then: Callable[[], None] | None = None
    ) -> int:
        def write(db: sqlite3.Connection) -> int:
            return db.execute(sql, tuple(args)).rowcount

        return await self._call(write, None if then is None else lambda _: then())

    async def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        return await self._committer.run(
            lambda db: db.execute(sql, tuple(args)).fetchall(), transaction=False
        )

    async def _row(self, sql: str, args: Iterable[Any] = ()) -> sqlite3.Row | None:
        rows = await self._rows(sql, args)
        return rows[0] if rows else None

    # -- volumes --------------------------------------------------------------------------

    async def insert_volume(self, v: Volume, *, budget: Budget = None) -> Volume:
        """Record a new volume; with `budget`, only if it keeps the pool within it."""

        def insert(db: sqlite3.Connection) -> Volume:
            _check_budget(db, v.capacity_bytes, budget)
            cur = db.execute(
                "INSERT INTO volumes (id, name, state, capacity_bytes, node_id, parameters,"
                " mutable_parameters, source_kind, source_id, ephemeral, created_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    v.id,
                    v.name,
                    v.state.value,
                    v.capacity_bytes,
                    v.node_id,
                    json.dumps(v.parameters, sort_keys=True),
                    json.dumps(v.mutable_parameters, sort_keys=True),
                    v.source.kind.value if v.source else None,
                    v.source.id if v.source else None,
                    int(v.ephemeral),
                    v.created_at,
                ),
            )
            row = db.execute("SELECT * FROM volumes WHERE seq = ?", (cur.lastrowid,)).fetchone()
            return _volume(row)

        return await self._call(insert, then=self._remember)

    async def get_volume(self, volume_id: str) -> Volume | None:
        return self._volumes.get(volume_id)

    async def get_volume_by_name(self, name: str) -> Volume | None:
        volume_id = self._volume_ids.get(name)
        return None if volume_id is None else self._volumes.get(volume_id)

    async def set_volume_state(self, volume_id: str, state: VolumeState) -> None:
        await self._write(
            "UPDATE volumes SET state = ? WHERE id = ?",
            (state.value, volume_id),
            then=lambda: self._update(volume_id, lambda v: dataclasses.replace(v, state=state)),
        )

    async def set_volume_capacity(
        self, volume_id: str, capacity: int, *, budget: int | None = None
    ) -> None:
        """Record a new size; with `budget`, only if the growth keeps the pool within it."""

        def update(db: sqlite3.Connection) -> None:
            row = db.execute(
                "SELECT capacity_bytes FROM volumes WHERE id = ?", (volume_id,)
            ).fetchone()
            if row is not None:
                _check_budget(db, capacity - int(row[0]), budget)
            db.execute("UPDATE volumes SET capacity_bytes = ? WHERE id = ?", (capacity, volume_id))

        await self._call(
            update,
            then=lambda _: self._update(
                volume_id, lambda v: dataclasses.replace(v, capacity_bytes=capacity)
            ),
        )

    async def set_mutable_parameters(self, volume_id: str, params: dict[str, str]) -> None:
        await self._write(
            "UPDATE volumes SET mutable_parameters = ? WHERE id = ?",
            (json.dumps(params, sort_keys=True), volume_id),
            then=lambda: self._update(
                volume_id, lambda v: dataclasses.replace(v, mutable_parameters=dict(params))
            ),
        )

    async def delete_volume(self, volume_id: str) -> None:
        await self._write(
            "DELETE FROM volumes WHERE id = ?", (volume_id,), then=lambda: self._forget(volume_id)
        )

    def _forget(self, volume_id: str) -> None:
        if (volume := self._volumes.pop(volume_id, None)) is not None:
            self._volume_ids.pop(volume.name, None)

    async def list_volumes(self, after_seq: int = 0, limit: int = -1) -> list[Volume]:
        rows = await self._rows(
            "SELECT * FROM volumes WHERE seq > ? AND state = 'ready' ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [_volume(r) for r in rows]

    async def all_volumes(self) -> list[Volume]:
        return sorted(self._volumes.values(), key=lambda v: v.seq)

    async def provisioned_bytes(self) -> int:
        """Bytes promised to every volume and snapshot image, whatever its state."""
        row = await self._row(_PROVISIONED_SQL)
        return int(row[0]) if row else 0

    async def last_seq(self, table: str) -> int:
        """The highest `seq` ever given out in `table` (0: none yet); deleted rows count."""
        if table not in ("volumes", "snapshots"):
            raise ValueError(f"no sequence for table {table!r}")
        row = await self._row("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,))
        return int(row[0]) if row else 0

    # -- snapshots ------------------------------------------------------------------------

    async def insert_snapshot(self, s: Snapshot, *, budget: int | None = None) -> Snapshot:
        """Record a new snapshot; with `budget`, only if it keeps the pool within it."""

        def insert(db: sqlite3.Connection) -> Snapshot:
            _check_budget(db, s.size_bytes, budget)
            cur = db.execute(
                "INSERT INTO snapshots (id, name, source_volume_id, size_bytes, ready, created_at)"
                " VALUES (?,?,?,?,?,?)",
                (s.id, s.name, s.source_volume_id, s.size_bytes, int(s.ready), s.created_at),
            )
            row = db.execute("SELECT * FROM snapshots WHERE seq = ?", (cur.lastrowid,)).fetchone()
            return _snapshot(row)

        return await self._call(insert)

    async def get_snapshot(self, snapshot_id: str) -> Snapshot | None:
        row = await self._row("SELECT * FROM snapshots WHERE id = ?", (snapshot_id,))
        return _snapshot(row) if row else None

    async def get_snapshot_by_name(self, name: str) -> Snapshot | None:
        row = await self._row("SELECT * FROM snapshots WHERE name = ?", (name,))
        return _snapshot(row) if row else None

    async def set_snapshot_ready(self, snapshot_id: str, ready: bool = True) -> None:
        """Mark a snapshot usable, or (before its image goes) not usable any more."""
        await self._write("UPDATE snapshots SET ready = ? WHERE id = ?", (int(ready), snapshot_id))

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await self._write("DELETE FROM snapshots WHERE id = ?", (snapshot_id,))

    async def list_snapshots(
        self,
        after_seq: int = 0,
        limit: int = -1,
        *,
        source_volume_id: str = "",
        snapshot_id: str = "",
    ) -> list[Snapshot]:
        sql = "SELECT * FROM snapshots WHERE seq > ? AND ready = 1"
        args: list[Any] = [after_seq]
        if source_volume_id:
            sql += " AND source_volume_id = ?"
            args.append(source_volume_id)
        if snapshot_id:
            sql += " AND id = ?"
            args.append(snapshot_id)
        rows = await self._rows(sql + " ORDER BY seq LIMIT ?", [*args, limit])
        return [_snapshot(r) for r in rows]

    async def all_snapshots(self) -> list[Snapshot]:
        return [_snapshot(r) for r in await self._rows("SELECT * FROM snapshots ORDER BY seq")]

    # -- publications ---------------------------------------------------------------------

    async def add_publication(self, p: Publication) -> None:
        await self._write(
            "INSERT OR REPLACE INTO publications"
            " (volume_id, kind, path, node_id, read_only, capability) VALUES (?,?,?,?,?,?)",
            (
                p.volume_id,
                p.kind.value,
                p.path,
                p.node_id,
                int(p.read_only),
                _capability_json(p.capability),
            ),
            then=lambda: self._append_publication(p),
        )

    def _append_publication(self, p: Publication) -> None:
        # INSERT OR REPLACE gives the row a new rowid: it moves to the end.
        self._forget_publication(p.volume_id, p.kind, p.path)
        key = (p.volume_id, p.kind, p.path)
        self._publications[key] = p
        self._by_volume.setdefault(p.volume_id, {})[key] = p

    async def remove_publication(self, volume_id: str, kind: PublicationKind, path: str) -> None:
        await self._write(
            "DELETE FROM publications WHERE volume_id = ? AND kind = ? AND path = ?",
            (volume_id, kind.value, path),
            then=lambda: self._forget_publication(volume_id, kind, path),
        )

    def _forget_publication(self, volume_id: str, kind: PublicationKind, path: str) -> None:
        key = (volume_id, kind, path)
        self._publications.pop(key, None)
        if (of_volume := self._by_volume.get(volume_id)) is not None:
            of_volume.pop(key, None)
            if not of_volume:
                del self._by_volume[volume_id]

    async def publications(
        self, volume_id: str | None = None, kind: PublicationKind | None = None
    ) -> list[Publication]:
        pubs = self._publications if volume_id is None else self._by_volume.get(volume_id, {})
        return [p for p in pubs.values() if kind is None or p.kind is kind]
