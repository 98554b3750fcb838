"""Node requests: protobuf in, engine requests out, with the checks that are about the
wire (required fields, path shapes). What a volume may ask for is the engine's policy."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from aiocsi._proto.csi import v1 as csi
from aiocsi.engine.policy import is_ephemeral
from aiocsi.engine.requests import PublishVolume, StageVolume
from aiocsi.errors import InvalidArgument
from aiocsi.models import Capability
from aiocsi.services.validation.common import MAX_PATH_BYTES, capability, string, string_map


def node_capability(message: csi.VolumeCapability | None) -> Capability:
    return capability(message, "volume_capability")


def _is_under(path: str, root: Path) -> bool:
    candidate = PurePosixPath(path)
    return candidate != PurePosixPath(root) and candidate.is_relative_to(root)


def path(value: str, field: str, roots: Sequence[Path] = ()) -> str:
    """An absolute, normalised path (a trailing "/" is dropped), under one of `roots` if any."""
    string(value, field, limit=MAX_PATH_BYTES)
    if not value.startswith("/"):
        raise InvalidArgument(f"{field} {value!r} must be an absolute path")
    stripped = value.rstrip("/")
    # normpath keeps a leading "//" (POSIX leaves its meaning open), so look for it too.
    if not stripped or "//" in value or os.path.normpath(value) != stripped:
        raise InvalidArgument(f"{field} {value!r} must be normalised (no '..', '.', or '//')")
    if roots and not any(_is_under(stripped, root) for root in roots):
        allowed = ", ".join(str(root) for root in roots)
        raise InvalidArgument(f"{field} {value!r} is not under an allowed path root ({allowed})")
    return stripped


def lookup_path(value: str, field: str) -> str:
    """A path that is only looked up (stats, expand): one where nothing lives is NOT_FOUND.

    csi-sanity asks NodeGetVolumeStats and NodeExpandVolume about "some/path" and expects
    NOT_FOUND, so only a missing path is INVALID_ARGUMENT here.
    """
    string(value, field, limit=MAX_PATH_BYTES)
    return os.path.normpath(value) if value.startswith("/") else value


def stage(req: csi.NodeStageVolumeRequest, roots: Sequence[Path] = ()) -> StageVolume:
    string_map(req.secrets, "secrets")
    string_map(req.publish_context, "publish_context")
    volume_id = string(req.volume_id, "volume_id")
    staging = path(req.staging_target_path, "staging_target_path", roots)
    return StageVolume(
        volume_id=volume_id,
        staging_path=staging,
        capability=node_capability(req.volume_capability),
        volume_context=string_map(req.volume_context, "volume_context"),
    )


def _apart(target: str, staging: str) -> None:
    """A target inside the staging mount (or the reverse) would bind a volume into itself."""
    inner, outer = PurePosixPath(target), PurePosixPath(staging)
    if inner.is_relative_to(outer) or outer.is_relative_to(inner):
        raise InvalidArgument(
            f"target_path {target!r} and staging_target_path {staging!r} must not be the same "
            "path or lie one inside the other"
        )


def publish(req: csi.NodePublishVolumeRequest, roots: Sequence[Path] = ()) -> PublishVolume:
    string_map(req.secrets, "secrets")
    string_map(req.publish_context, "publish_context")
    volume_id = string(req.volume_id, "volume_id")
    target = path(req.target_path, "target_path", roots)
    cap = node_capability(req.volume_capability)
    context = string_map(req.volume_context, "volume_context")
    staging = req.staging_target_path
    # Inline ephemeral volumes have no staging path: the driver stages them itself.
    if not is_ephemeral(context):
        staging = path(staging, "staging_target_path", roots)
        _apart(target, staging)
    return PublishVolume(
        volume_id=volume_id,
        target_path=target,
        capability=cap,
        read_only=req.readonly,
        staging_path=staging,
        volume_context=context,
    )
