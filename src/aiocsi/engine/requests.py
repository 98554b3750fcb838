"""Validated requests the services hand to the engine (already free of protobuf)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiocsi.models import Capability, ContentSource

Topology = dict[str, str]


@dataclass(frozen=True)
class CapacityRange:
    required_bytes: int = 0
    limit_bytes: int = 0

    def admits(self, size: int) -> bool:
        return size >= self.required_bytes and (self.limit_bytes == 0 or size <= self.limit_bytes)


@dataclass(frozen=True)
class TopologyRequirement:
    requisite: tuple[Topology, ...] = ()
    preferred: tuple[Topology, ...] = ()


@dataclass(frozen=True)
class CreateVolume:
    name: str
    capacity: CapacityRange
    capabilities: tuple[Capability, ...]
    parameters: dict[str, str] = field(default_factory=dict)
    mutable_parameters: dict[str, str] = field(default_factory=dict)
    source: ContentSource | None = None
    topology: TopologyRequirement | None = None


@dataclass(frozen=True)
class StageVolume:
    volume_id: str
    staging_path: str
    capability: Capability
    volume_context: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PublishVolume:
    volume_id: str
    target_path: str
    capability: Capability
    read_only: bool
    staging_path: str = ""
    volume_context: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CreateGroupSnapshot:
    name: str
    source_volume_ids: list[str]
    parameters: dict[str, str] = field(default_factory=dict)
