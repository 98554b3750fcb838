"""Schema versions; each entry migrates the database from version i to i + 1."""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE volumes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,
        capacity_bytes INTEGER NOT NULL,
        node_id TEXT NOT NULL,
        parameters TEXT NOT NULL,
        mutable_parameters TEXT NOT NULL,
        source_kind TEXT,
        source_id TEXT,
        ephemeral INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE TABLE snapshots (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL UNIQUE,
        source_volume_id TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        ready INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX snapshots_by_source ON snapshots (source_volume_id);
    CREATE TABLE publications (
        volume_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        path TEXT NOT NULL,
        node_id TEXT NOT NULL,
        read_only INTEGER NOT NULL,
        capability TEXT,
        PRIMARY KEY (volume_id, kind, path)
    );
    """,
    """
    CREATE TABLE group_snapshots (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL UNIQUE,
        ready INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    ALTER TABLE snapshots ADD COLUMN group_snapshot_id TEXT;
    CREATE INDEX snapshots_by_group ON snapshots (group_snapshot_id);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
