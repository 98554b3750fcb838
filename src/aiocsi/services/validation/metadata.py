"""Validation of SnapshotMetadata requests: protobuf in, plain values out."""

from __future__ import annotations

from dataclasses import dataclass

from aiocsi._proto.csi import v1 as csi
from aiocsi.errors import InvalidArgument
from aiocsi.services.validation.common import string, string_map


@dataclass(frozen=True)
class Window:
    starting_offset: int
    max_results: int  # 0: the driver's default


def _window(starting_offset: int, max_results: int) -> Window:
    # Past the end is OUT_OF_RANGE, which only the engine (knowing the size) can tell.
    if starting_offset < 0:
        raise InvalidArgument(f"starting_offset must not be negative, not {starting_offset}")
    if max_results < 0:
        raise InvalidArgument(f"max_results must not be negative, not {max_results}")
    return Window(starting_offset, max_results)


def allocated(message: csi.GetMetadataAllocatedRequest) -> tuple[str, Window]:
    snapshot_id = string(message.snapshot_id, "snapshot_id")
    string_map(message.secrets, "secrets")
    return snapshot_id, _window(message.starting_offset, message.max_results)


def delta(message: csi.GetMetadataDeltaRequest) -> tuple[str, str, Window]:
    base = string(message.base_snapshot_id, "base_snapshot_id")
    target = string(message.target_snapshot_id, "target_snapshot_id")
    string_map(message.secrets, "secrets")
    return base, target, _window(message.starting_offset, message.max_results)
