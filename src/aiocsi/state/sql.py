"""The store's SQL, and the budget check that must share a transaction with its write."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite3

INSERT_VOLUME = (
    "INSERT INTO volumes (id, name, state, capacity_bytes, node_id, parameters,"
    " mutable_parameters, source_kind, source_id, ephemeral, created_at)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)
VOLUME_BY_SEQ = "SELECT * FROM volumes WHERE seq = ?"
VOLUME_CAPACITY = "SELECT capacity_bytes FROM volumes WHERE id = ?"
SET_VOLUME_STATE = "UPDATE volumes SET state = ? WHERE id = ?"
SET_VOLUME_CAPACITY = "UPDATE volumes SET capacity_bytes = ? WHERE id = ?"
SET_MUTABLE_PARAMETERS = "UPDATE volumes SET mutable_parameters = ? WHERE id = ?"
DELETE_VOLUME = "DELETE FROM volumes WHERE id = ?"
ALL_VOLUMES = "SELECT * FROM volumes ORDER BY seq"
READY_VOLUMES_PAGE = "SELECT * FROM volumes WHERE seq > ? AND state = 'ready' ORDER BY seq LIMIT ?"

INSERT_SNAPSHOT = (
    "INSERT INTO snapshots"
    " (id, name, source_volume_id, size_bytes, ready, created_at, group_snapshot_id)"
    " VALUES (?,?,?,?,?,?,?)"
)
SNAPSHOT_BY_SEQ = "SELECT * FROM snapshots WHERE seq = ?"
SNAPSHOT_BY_ID = "SELECT * FROM snapshots WHERE id = ?"
SNAPSHOT_BY_NAME = "SELECT * FROM snapshots WHERE name = ?"
SET_SNAPSHOT_READY = "UPDATE snapshots SET ready = ? WHERE id = ?"
DELETE_SNAPSHOT = "DELETE FROM snapshots WHERE id = ?"
ALL_SNAPSHOTS = "SELECT * FROM snapshots ORDER BY seq"
SNAPSHOTS_OF_GROUP = "SELECT * FROM snapshots WHERE group_snapshot_id = ? ORDER BY seq"
SET_GROUP_MEMBERS_READY = "UPDATE snapshots SET ready = ? WHERE group_snapshot_id = ?"
DELETE_GROUP_MEMBERS = "DELETE FROM snapshots WHERE group_snapshot_id = ?"

INSERT_GROUP = "INSERT INTO group_snapshots (id, name, ready, created_at) VALUES (?,?,?,?)"
GROUP_BY_SEQ = "SELECT * FROM group_snapshots WHERE seq = ?"
GROUP_BY_ID = "SELECT * FROM group_snapshots WHERE id = ?"
GROUP_BY_NAME = "SELECT * FROM group_snapshots WHERE name = ?"
SET_GROUP_READY = "UPDATE group_snapshots SET ready = ? WHERE id = ?"
DELETE_GROUP = "DELETE FROM group_snapshots WHERE id = ?"
ALL_GROUPS = "SELECT * FROM group_snapshots ORDER BY seq"


def ready_snapshots_page(*, by_source: bool, by_id: bool) -> str:
    """Ready snapshots after a sequence number, optionally of one source or with one id;
    the arguments are the sequence number, then the filters asked for, then the limit."""
    sql = "SELECT * FROM snapshots WHERE seq > ? AND ready = 1"
    if by_source:
        sql += " AND source_volume_id = ?"
    if by_id:
        sql += " AND id = ?"
    return sql + " ORDER BY seq LIMIT ?"


UPSERT_PUBLICATION = (
    "INSERT OR REPLACE INTO publications"
    " (volume_id, kind, path, node_id, read_only, capability) VALUES (?,?,?,?,?,?)"
)
DELETE_PUBLICATION = "DELETE FROM publications WHERE volume_id = ? AND kind = ? AND path = ?"
ALL_PUBLICATIONS = "SELECT * FROM publications ORDER BY rowid"

LAST_SEQ = "SELECT seq FROM sqlite_sequence WHERE name = ?"
SEQUENCED_TABLES = ("volumes", "snapshots", "group_snapshots")

# Every image in the pool, volume or snapshot, counts against its capacity.
PROVISIONED = (
    "SELECT (SELECT COALESCE(SUM(capacity_bytes), 0) FROM volumes)"
    " + (SELECT COALESCE(SUM(size_bytes), 0) FROM snapshots)"
)


class OverBudget(Exception):
    """Recording this many more bytes would provision more than the pool's budget."""

    def __init__(self, provisioned: int, wanted: int, budget: int) -> None:
        self.provisioned = provisioned
        self.wanted = wanted
        self.budget = budget
        super().__init__(f"{provisioned} + {wanted} bytes exceeds the budget of {budget}")


# A budget in bytes, or how to get it in the store thread (a statvfs: one fewer hand-off).
Budget = int | Callable[[], int] | None


def check_budget(db: sqlite3.Connection, wanted: int, budget: Budget) -> None:
    """Refuse `wanted` more bytes over `budget`; call inside the write's own job, so that
    the check and the write are one step that no other writer can split.
    """
    if budget is None or wanted <= 0:
        return
    if callable(budget):
        budget = budget()
    provisioned = int(db.execute(PROVISIONED).fetchone()[0])
    if provisioned + wanted > budget:
        raise OverBudget(provisioned, wanted, budget)
