"""Validation of Controller requests: protobuf in, engine requests out."""

from __future__ import annotations

from aiocsi._proto.csi import v1 as csi
from aiocsi.engine.parameters import (
    MUTABLE_PARAMETERS,
    SNAPSHOT_PARAMETERS,
    VOLUME_PARAMETERS,
    normalise,
)
from aiocsi.engine.requests import CreateVolume, Topology, TopologyRequirement
from aiocsi.errors import InvalidArgument
from aiocsi.models import ContentSource, SourceKind
from aiocsi.services.validation.common import capabilities, capacity, string, string_map


def volume_parameters(params: dict[str, str]) -> dict[str, str]:
    return normalise(string_map(params, "parameters"), VOLUME_PARAMETERS, "parameters")


def mutable_parameters(params: dict[str, str]) -> dict[str, str]:
    return normalise(
        string_map(params, "mutable_parameters"), MUTABLE_PARAMETERS, "mutable_parameters"
    )


def snapshot_parameters(params: dict[str, str]) -> dict[str, str]:
    return normalise(string_map(params, "parameters"), SNAPSHOT_PARAMETERS, "parameters")


def _topologies(items: list[csi.Topology], field: str) -> tuple[Topology, ...]:
    return tuple(string_map(t.segments, f"{field}[{i}].segments") for i, t in enumerate(items))


def _content_source(source: csi.VolumeContentSource | None) -> ContentSource | None:
    if source is None:
        return None
    if source.snapshot is not None and source.volume is not None:
        raise InvalidArgument("volume_content_source sets both snapshot and volume; choose one")
    if source.snapshot is not None:
        sid = string(source.snapshot.snapshot_id, "volume_content_source.snapshot.snapshot_id")
        return ContentSource(SourceKind.SNAPSHOT, sid)
    if source.volume is not None:
        vid = string(source.volume.volume_id, "volume_content_source.volume.volume_id")
        return ContentSource(SourceKind.VOLUME, vid)
    raise InvalidArgument("volume_content_source names neither a snapshot nor a volume")


def create_volume(req: csi.CreateVolumeRequest) -> tuple[CreateVolume, dict[str, str]]:
    string_map(req.secrets, "secrets")
    requirement = None
    if req.accessibility_requirements is not None:
        requirement = TopologyRequirement(
            requisite=_topologies(req.accessibility_requirements.requisite,
                                  "accessibility_requirements.requisite"),
            preferred=_topologies(req.accessibility_requirements.preferred,
                                  "accessibility_requirements.preferred"),
        )
    params = volume_parameters(req.parameters)
    request = CreateVolume(
        name=string(req.name, "name"),
        capacity=capacity(req.capacity_range),
        capabilities=capabilities(req.volume_capabilities, "volume_capabilities"),
        parameters=params,
        mutable_parameters=mutable_parameters(req.mutable_parameters),
        source=_content_source(req.volume_content_source),
        topology=requirement,
    )
    return request, params


def volume_id(value: str) -> str:
    return string(value, "volume_id")


def node_id(value: str) -> str:
    return string(value, "node_id")
