"""Request parts every CSI caller builds the same way: capabilities, sources, topology."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiocsi._proto.csi import v1 as csi

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

AccessMode = csi.VolumeCapabilityAccessModeMode
SINGLE_NODE_WRITER = AccessMode.SINGLE_NODE_WRITER


def volume_capability(
    *,
    block: bool = False,
    fs_type: str = "",
    mode: AccessMode = SINGLE_NODE_WRITER,
    mount_flags: Iterable[str] = (),
) -> csi.VolumeCapability:
    """A block or mount capability; an empty `fs_type` leaves the choice to the driver."""
    access = csi.VolumeCapabilityAccessMode(mode=mode)
    if block:
        return csi.VolumeCapability(block=csi.VolumeCapabilityBlockVolume(), access_mode=access)
    mount = csi.VolumeCapabilityMountVolume(fs_type=fs_type, mount_flags=list(mount_flags))
    return csi.VolumeCapability(mount=mount, access_mode=access)


def content_source(
    *, snapshot_id: str | None = None, volume_id: str | None = None
) -> csi.VolumeContentSource | None:
    """A restore (from a snapshot) or a clone (from a volume); None for an empty volume."""
    if snapshot_id is not None and volume_id is not None:
        raise ValueError("a volume comes from a snapshot or from a volume, not both")
    if snapshot_id is not None:
        return csi.VolumeContentSource(
            snapshot=csi.VolumeContentSourceSnapshotSource(snapshot_id=snapshot_id)
        )
    if volume_id is not None:
        return csi.VolumeContentSource(
            volume=csi.VolumeContentSourceVolumeSource(volume_id=volume_id)
        )
    return None


def topology_requirement(segments: Mapping[str, str]) -> csi.TopologyRequirement | None:
    """The volume must be reachable from, and preferably placed in, the one given segment."""
    if not segments:
        return None
    topology = csi.Topology(segments=dict(segments))
    return csi.TopologyRequirement(requisite=[topology], preferred=[topology])
