"""Validation of Node requests: ids, paths, capabilities and mount flags."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from aiocsi._proto.csi import v1 as csi
from aiocsi.engine.node import is_ephemeral
from aiocsi.engine.requests import PublishVolume, StageVolume
from aiocsi.errors import InvalidArgument
from aiocsi.models import Capability
from aiocsi.services.validation.common import (
    MAX_PATH_BYTES,
    capability,
    string,
    string_map,
)

# Mount flags a volume may ask for. Anything that changes device or setuid semantics
# (suid, dev, exec), names another path or identity (uid=, context=), binds, moves or
# remounts is refused: a flag is a tenant's wish, and the mount runs as root on the node.
SAFE_MOUNT_FLAGS = frozenset({
    "ro", "rw", "noatime", "relatime", "strictatime", "nodiratime", "lazytime", "nolazytime",
    "nosuid", "nodev", "noexec", "sync", "async", "dirsync", "discard", "nodiscard",
    "noacl", "acl", "user_xattr", "nouser_xattr", "nobarrier", "barrier",
    "norecovery", "ssd", "nossd", "autodefrag", "noautodefrag", "inode64", "largeio",
})
_NUMBER = re.compile(r"[0-9]{1,9}")
_BYTES = re.compile(r"[0-9]{1,9}[kKmMgG]?")
# Flags with a value: each value is checked by shape, never passed through as free text.
# errors=panic is left out on purpose: one tenant's corrupt volume must not crash the node.
SAFE_VALUED_FLAGS: Mapping[str, re.Pattern[str]] = {
    "commit": _NUMBER,
    "stripe": _NUMBER,
    "stride": _NUMBER,
    "logbufs": _NUMBER,
    "max_batch_time": _NUMBER,
    "min_batch_time": _NUMBER,
    "allocsize": _BYTES,
    "logbsize": _BYTES,
    "data": re.compile(r"ordered|writeback|journal"),
    "errors": re.compile(r"continue|remount-ro"),
    "compress": re.compile(r"(zlib|lzo|zstd)(:[0-9]{1,2})?|no"),
    "compress-force": re.compile(r"(zlib|lzo|zstd)(:[0-9]{1,2})?"),
    "space_cache": re.compile(r"v1|v2"),
}


def mount_flag(flag: str) -> str:
    name, sep, value = flag.partition("=")
    if not sep and name in SAFE_MOUNT_FLAGS:
        return flag
    pattern = SAFE_VALUED_FLAGS.get(name) if sep else None
    if pattern is not None and pattern.fullmatch(value):
        return flag
    raise InvalidArgument(f"mount flag {flag!r} is not allowed")


def node_capability(message: csi.VolumeCapability | None) -> Capability:
    cap = capability(message, "volume_capability")
    for flag in cap.mount_flags:
        mount_flag(flag)
    return cap


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
    return PublishVolume(
        volume_id=volume_id, target_path=target, capability=cap, read_only=req.readonly,
        staging_path=staging, volume_context=context,
    )
