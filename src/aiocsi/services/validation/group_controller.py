"""Validation of GroupController requests."""

from __future__ import annotations

from collections.abc import Sequence

from aiocsi._proto.csi import v1 as csi
from aiocsi.engine.requests import CreateGroupSnapshot
from aiocsi.errors import InvalidArgument
from aiocsi.services.validation.common import string, string_map
from aiocsi.services.validation.controller import parameters


def _ids(values: Sequence[str], field: str, *, required: bool) -> list[str]:
    if required and not values:
        raise InvalidArgument(f"{field} is required: name at least one")
    ids = [string(v, f"{field}[{i}]") for i, v in enumerate(values)]
    if len(set(ids)) != len(ids):
        raise InvalidArgument(f"{field} names an id more than once")
    return ids


def create(req: csi.CreateVolumeGroupSnapshotRequest) -> CreateGroupSnapshot:
    name = string(req.name, "name")
    sources = _ids(req.source_volume_ids, "source_volume_ids", required=True)
    string_map(req.secrets, "secrets")
    return CreateGroupSnapshot(name, sources, parameters(req.parameters))


def group_id(value: str) -> str:
    return string(value, "group_snapshot_id")


def snapshot_ids(
    req: csi.DeleteVolumeGroupSnapshotRequest | csi.GetVolumeGroupSnapshotRequest,
) -> list[str]:
    """The member ids the CO names (empty: it names none, and nothing is compared)."""
    string_map(req.secrets, "secrets")
    return _ids(req.snapshot_ids, "snapshot_ids", required=False)
