"""Validation of Node requests: ids, paths, capabilities and mount flags."""

from __future__ import annotations

import os

from aiocsi._proto.csi import v1 as csi
from aiocsi.engine.requests import PublishVolume, StageVolume
from aiocsi.errors import InvalidArgument
from aiocsi.models import Capability
from aiocsi.services.validation.common import (
    MAX_PATH_BYTES,
    capability,
    string,
    string_map,
)

# Mount flags a volume may ask for (docs/parameters.md). Anything that changes device or
# setuid semantics, names another path, or remounts is refused.
SAFE_MOUNT_FLAGS = frozenset({
    "ro", "rw", "noatime", "relatime", "strictatime", "nodiratime", "lazytime", "nolazytime",
    "nosuid", "nodev", "noexec", "sync", "async", "dirsync", "discard", "nodiscard",
    "noacl", "acl", "user_xattr", "nouser_xattr", "nobarrier", "barrier",
    "norecovery", "ssd", "nossd", "autodefrag", "noautodefrag", "inode64", "largeio",
})
SAFE_VALUED_FLAGS = frozenset({
    "commit", "data", "errors", "compress", "compress-force", "space_cache", "allocsize",
    "logbufs", "logbsize", "stripe", "stride", "max_batch_time", "min_batch_time",
})


def mount_flag(flag: str) -> str:
    name, sep, value = flag.partition("=")
    if (not sep and name in SAFE_MOUNT_FLAGS) or (
        sep and name in SAFE_VALUED_FLAGS and value and "/" not in value and "," not in value
    ):
        return flag
    raise InvalidArgument(
        f"mount flag {flag!r} is not allowed (see docs/parameters.md for the allowed flags)"
    )


def node_capability(message: csi.VolumeCapability | None) -> Capability:
    cap = capability(message, "volume_capability")
    for flag in cap.mount_flags:
        mount_flag(flag)
    return cap


def path(value: str, field: str) -> str:
    string(value, field, limit=MAX_PATH_BYTES)
    if not os.path.isabs(value):
        raise InvalidArgument(f"{field} {value!r} must be an absolute path")
    if os.path.normpath(value) != value.rstrip("/") or value.rstrip("/") == "":
        raise InvalidArgument(f"{field} {value!r} must be normalised (no '..', '.', or '//')")
    return value.rstrip("/")


def stage(req: csi.NodeStageVolumeRequest) -> StageVolume:
    string_map(req.secrets, "secrets")
    string_map(req.publish_context, "publish_context")
    volume_id = string(req.volume_id, "volume_id")
    staging = path(req.staging_target_path, "staging_target_path")
    return StageVolume(
        volume_id=volume_id,
        staging_path=staging,
        capability=node_capability(req.volume_capability),
        volume_context=string_map(req.volume_context, "volume_context"),
    )


def publish(req: csi.NodePublishVolumeRequest) -> PublishVolume:
    string_map(req.secrets, "secrets")
    string_map(req.publish_context, "publish_context")
    volume_id = string(req.volume_id, "volume_id")
    target = path(req.target_path, "target_path")
    cap = node_capability(req.volume_capability)
    context = string_map(req.volume_context, "volume_context")
    staging = req.staging_target_path
    from aiocsi.engine.node import is_ephemeral  # noqa: PLC0415 - avoid a cycle at import

    if not is_ephemeral(context):
        staging = path(staging, "staging_target_path")
    return PublishVolume(
        volume_id=volume_id, target_path=target, capability=cap, read_only=req.readonly,
        staging_path=staging, volume_context=context,
    )
