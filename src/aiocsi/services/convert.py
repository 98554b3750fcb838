"""Domain records -> protobuf messages (the one place that builds response shapes)."""

from __future__ import annotations

import datetime as dt

from aiocsi._proto.csi import v1 as csi
from aiocsi.config import TOPOLOGY_KEY
from aiocsi.models import GroupSnapshot, Snapshot, SourceKind, Volume, VolumeCondition


def topology(node_id: str) -> csi.Topology:
    return csi.Topology(segments={TOPOLOGY_KEY: node_id})


def volume_entry(v: Volume, nodes: list[str], c: VolumeCondition) -> csi.ListVolumesResponseEntry:
    return csi.ListVolumesResponseEntry(
        volume=volume(v),
        status=csi.ListVolumesResponseVolumeStatus(
            published_node_ids=nodes, volume_condition=condition(c)
        ),
    )


def volume_entry_key(v: Volume, nodes: list[str], c: VolumeCondition) -> tuple[object, ...]:
    """Everything `volume_entry` builds from, as plain values: the key its encoding is
    kept under (services/pages.py)."""
    source = (v.source.kind.value, v.source.id) if v.source is not None else ("", "")
    return (v.id, v.capacity_bytes, v.node_id, *source, tuple(nodes), c.abnormal, c.message)


def snapshot_key(s: Snapshot) -> tuple[object, ...]:
    """Everything `snapshot` builds from, as plain values (services/pages.py)."""
    return (s.id, s.size_bytes, s.source_volume_id, s.created_at, s.ready, s.group_snapshot_id)


def volume(v: Volume) -> csi.Volume:
    source = None
    if v.source is not None:
        source = (
            csi.VolumeContentSource(
                snapshot=csi.VolumeContentSourceSnapshotSource(snapshot_id=v.source.id)
            )
            if v.source.kind is SourceKind.SNAPSHOT
            else csi.VolumeContentSource(
                volume=csi.VolumeContentSourceVolumeSource(volume_id=v.source.id)
            )
        )
    return csi.Volume(
        capacity_bytes=v.capacity_bytes,
        volume_id=v.id,
        content_source=source,
        accessible_topology=[topology(v.node_id)],
    )


def condition(c: VolumeCondition) -> csi.VolumeCondition:
    return csi.VolumeCondition(abnormal=c.abnormal, message=c.message)


def snapshot(s: Snapshot) -> csi.Snapshot:
    return csi.Snapshot(
        size_bytes=s.size_bytes,
        snapshot_id=s.id,
        source_volume_id=s.source_volume_id,
        creation_time=dt.datetime.fromtimestamp(s.created_at, tz=dt.UTC),
        ready_to_use=s.ready,
        group_snapshot_id=s.group_snapshot_id,
    )


def group_snapshot(g: GroupSnapshot) -> csi.VolumeGroupSnapshot:
    return csi.VolumeGroupSnapshot(
        group_snapshot_id=g.id,
        snapshots=[snapshot(m) for m in g.members],
        creation_time=dt.datetime.fromtimestamp(g.created_at, tz=dt.UTC),
        ready_to_use=g.ready,
    )
