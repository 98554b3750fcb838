"""Validation of Controller requests: protobuf in, engine requests out."""

from __future__ import annotations

import re
from collections.abc import Sequence

from aiocsi._proto.csi import v1 as csi
from aiocsi.engine.paging import page_limit
from aiocsi.engine.requests import CreateVolume, Topology, TopologyRequirement
from aiocsi.errors import InvalidArgument, InvalidToken
from aiocsi.models import Capability, ContentSource, SourceKind
from aiocsi.services.validation.common import capabilities, capacity, string, string_map

# The tokens ListVolumes/ListSnapshots hand out: a positive sequence number, no sign, no
# leading zero, ASCII digits only (str.isdigit would let "²" through to int()).
_PAGE_TOKEN = re.compile(r"[1-9][0-9]{0,17}")


def page(max_entries: int, starting_token: str) -> tuple[int, int]:
    """Return (after_seq, limit) for a List call: the most entries its reply holds
    (engine/paging.py: a driver-chosen page when `max_entries` is 0).

    A token this driver cannot have issued is the spec's ABORTED; whether it is past every
    sequence number issued so far is for the engine to check.
    """
    if max_entries < 0:
        raise InvalidArgument("max_entries must not be negative")
    after = 0
    if starting_token:
        if _PAGE_TOKEN.fullmatch(starting_token) is None:
            raise InvalidToken(
                f"starting_token {starting_token[:32]!r} is not one this driver issued"
            )
        after = int(starting_token)
    return after, page_limit(max_entries)


def volume_capabilities(
    messages: Sequence[csi.VolumeCapability], field: str = "volume_capabilities"
) -> tuple[Capability, ...]:
    return capabilities(messages, field)


def parameters(params: dict[str, str], field: str = "parameters") -> dict[str, str]:
    """StorageClass-style parameters as given; the engine checks and normalises them."""
    return string_map(params, field)


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


def create_volume(req: csi.CreateVolumeRequest) -> CreateVolume:
    string_map(req.secrets, "secrets")
    requirement = None
    if req.accessibility_requirements is not None:
        requirement = TopologyRequirement(
            requisite=_topologies(
                req.accessibility_requirements.requisite, "accessibility_requirements.requisite"
            ),
            preferred=_topologies(
                req.accessibility_requirements.preferred, "accessibility_requirements.preferred"
            ),
        )
    return CreateVolume(
        name=string(req.name, "name"),
        capacity=capacity(req.capacity_range),
        capabilities=volume_capabilities(req.volume_capabilities),
        parameters=parameters(req.parameters),
        mutable_parameters=parameters(req.mutable_parameters, "mutable_parameters"),
        source=_content_source(req.volume_content_source),
        topology=requirement,
    )


def volume_id(value: str) -> str:
    return string(value, "volume_id")


def node_id(value: str) -> str:
    return string(value, "node_id")
