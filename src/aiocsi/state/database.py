"""Opening the state database: its settings and its migrations."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from aiocsi.state.schema import MIGRATIONS, SCHEMA_VERSION

if TYPE_CHECKING:
    from pathlib import Path


class SchemaTooNew(Exception):
    """The database was written by a newer aiocsi; refusing to downgrade it."""


def open_database(path: Path) -> sqlite3.Connection:
    """Open (creating if need be) and migrate the database at `path`, for one thread's use.

    Autocommit mode (`isolation_level=None`): the caller issues BEGIN and COMMIT itself.
    """
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        migrate(db, path)
    except BaseException:
        db.close()
        raise
    return db


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to SCHEMA_VERSION, one version per transaction."""
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path} has schema version {version}; this aiocsi knows {SCHEMA_VERSION}"
        )
    for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
        db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={target};\nCOMMIT;")
