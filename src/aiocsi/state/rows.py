"""Between model dataclasses and the columns of the store's tables."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING

from aiocsi.models import (
    AccessMode,
    AccessType,
    Capability,
    ContentSource,
    GroupSnapshot,
    Publication,
    PublicationKind,
    Snapshot,
    SourceKind,
    Volume,
    VolumeState,
)

if TYPE_CHECKING:
    import sqlite3

# A publication's key in the table and in the mirror: volume id, kind, path.
PubKey = tuple[str, PublicationKind, str]


def volume_from_row(row: sqlite3.Row) -> Volume:
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


def volume_columns(v: Volume) -> tuple[object, ...]:
    """In the order of `sql.INSERT_VOLUME`."""
    return (
        v.id,
        v.name,
        v.state.value,
        v.capacity_bytes,
        v.node_id,
        parameters_json(v.parameters),
        parameters_json(v.mutable_parameters),
        v.source.kind.value if v.source else None,
        v.source.id if v.source else None,
        int(v.ephemeral),
        v.created_at,
    )


def parameters_json(parameters: dict[str, str]) -> str:
    return json.dumps(parameters, sort_keys=True)


def snapshot_from_row(row: sqlite3.Row) -> Snapshot:
    return Snapshot(
        id=row["id"],
        name=row["name"],
        source_volume_id=row["source_volume_id"],
        size_bytes=row["size_bytes"],
        ready=bool(row["ready"]),
        created_at=row["created_at"],
        seq=row["seq"],
        group_snapshot_id=row["group_snapshot_id"] or "",
    )


def snapshot_columns(s: Snapshot) -> tuple[object, ...]:
    """In the order of `sql.INSERT_SNAPSHOT`."""
    group = s.group_snapshot_id or None
    return (s.id, s.name, s.source_volume_id, s.size_bytes, int(s.ready), s.created_at, group)


def group_from_row(row: sqlite3.Row, members: tuple[Snapshot, ...]) -> GroupSnapshot:
    return GroupSnapshot(
        id=row["id"],
        name=row["name"],
        ready=bool(row["ready"]),
        created_at=row["created_at"],
        members=members,
        seq=row["seq"],
    )


def group_columns(g: GroupSnapshot) -> tuple[object, ...]:
    """In the order of `sql.INSERT_GROUP`."""
    return (g.id, g.name, int(g.ready), g.created_at)


def publication_from_row(row: sqlite3.Row) -> Publication:
    return Publication(
        volume_id=row["volume_id"],
        kind=PublicationKind(row["kind"]),
        path=row["path"],
        node_id=row["node_id"],
        read_only=bool(row["read_only"]),
        capability=_capability(row["capability"]),
    )


def publication_columns(p: Publication) -> tuple[object, ...]:
    """In the order of `sql.UPSERT_PUBLICATION`."""
    capability = None if p.capability is None else json.dumps(asdict(p.capability))
    return (p.volume_id, p.kind.value, p.path, p.node_id, int(p.read_only), capability)


def _capability(text: str | None) -> Capability | None:
    if text is None:
        return None
    raw = json.loads(text)
    return Capability(
        access_type=AccessType(raw["access_type"]),
        access_mode=AccessMode(raw["access_mode"]),
        fs_type=raw["fs_type"],
        mount_flags=tuple(raw["mount_flags"]),
        mount_group=raw.get("mount_group", ""),  # absent in rows written before it existed
    )
