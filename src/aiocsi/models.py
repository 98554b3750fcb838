"""Plain domain records shared by the engine, the state store and the services."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

VOLUME_ID_RE = re.compile(r"^vol-[0-9a-f]{32}$")
SNAPSHOT_ID_RE = re.compile(r"^snap-[0-9a-f]{32}$")
GROUP_ID_RE = re.compile(r"^group-[0-9a-f]{32}$")


class AccessType(enum.StrEnum):
    MOUNT = "mount"
    BLOCK = "block"


class AccessMode(enum.StrEnum):
    """The single-node modes this driver supports (CSI's VolumeCapability.AccessMode)."""

    SINGLE_NODE_WRITER = "SINGLE_NODE_WRITER"
    SINGLE_NODE_READER_ONLY = "SINGLE_NODE_READER_ONLY"
    SINGLE_NODE_SINGLE_WRITER = "SINGLE_NODE_SINGLE_WRITER"
    SINGLE_NODE_MULTI_WRITER = "SINGLE_NODE_MULTI_WRITER"


@dataclass(frozen=True)
class Capability:
    access_type: AccessType
    access_mode: AccessMode
    fs_type: str = ""
    mount_flags: tuple[str, ...] = ()
    # CSI volume_mount_group: the decimal group id the filesystem root is given at stage.
    mount_group: str = ""


class VolumeState(enum.StrEnum):
    CREATING = "creating"
    READY = "ready"
    DELETING = "deleting"


class SourceKind(enum.StrEnum):
    SNAPSHOT = "snapshot"
    VOLUME = "volume"


@dataclass(frozen=True)
class ContentSource:
    kind: SourceKind
    id: str


@dataclass(frozen=True)
class Volume:
    id: str
    name: str
    capacity_bytes: int
    state: VolumeState
    node_id: str
    parameters: dict[str, str] = field(default_factory=dict)
    mutable_parameters: dict[str, str] = field(default_factory=dict)
    source: ContentSource | None = None
    ephemeral: bool = False
    created_at: float = 0.0
    seq: int = 0


@dataclass(frozen=True)
class Snapshot:
    id: str
    name: str
    source_volume_id: str
    size_bytes: int
    ready: bool
    created_at: float
    seq: int = 0
    group_snapshot_id: str = ""  # "" when not taken as a member of a group snapshot


@dataclass(frozen=True)
class GroupSnapshot:
    """Snapshots of several volumes taken together (CreateVolumeGroupSnapshot)."""

    id: str
    name: str
    ready: bool
    created_at: float
    members: tuple[Snapshot, ...] = ()
    seq: int = 0


class PublicationKind(enum.StrEnum):
    CONTROLLER = "controller"  # ControllerPublish: attached to a node
    STAGE = "stage"  # NodeStage: loop device (+ mount) at the staging path
    PUBLISH = "publish"  # NodePublish: bind mount at a target path


@dataclass(frozen=True)
class Publication:
    volume_id: str
    kind: PublicationKind
    path: str  # staging/target path; the node id for CONTROLLER
    node_id: str
    read_only: bool = False
    capability: Capability | None = None


@dataclass(frozen=True)
class VolumeCondition:
    abnormal: bool
    message: str

    @classmethod
    def healthy(cls) -> VolumeCondition:
        return cls(abnormal=False, message="volume is healthy")
