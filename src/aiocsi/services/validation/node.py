"""Validation of Node requests: ids, paths, capabilities and mount flags."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath

from aiocsi._proto.csi import v1 as csi
from aiocsi.config import ConfigError, parse_size
from aiocsi.engine.node import is_ephemeral
from aiocsi.engine.requests import PublishVolume, StageVolume
from aiocsi.errors import InvalidArgument
from aiocsi.models import VOLUME_ID_RE, AccessMode, Capability
from aiocsi.services.validation.common import (
    MAX_INT64,
    MAX_PATH_BYTES,
    capability,
    string,
    string_map,
)

# The volume_context key of an inline ephemeral volume's size (docs/parameters.md).
EPHEMERAL_SIZE_KEY = "size"

# Mount flags a volume may ask for. Anything that changes device or setuid semantics
# (suid, dev, exec), names another path or identity (uid=, context=), binds, moves or
# remounts is refused: a flag is a tenant's wish, and the mount runs as root on the node.
# The lists below were measured with mount(8) from util-linux 2.38 on Linux 6.18: each
# flag mounts on the filesystem it is listed for, so a refused flag is INVALID_ARGUMENT up
# front and never an INTERNAL failure of mount(8) at NodeStageVolume.
# fmt: off
GENERIC_MOUNT_FLAGS = frozenset({
    "ro", "rw", "noatime", "relatime", "strictatime", "nodiratime", "lazytime", "nolazytime",
    "nosuid", "nodev", "noexec", "sync", "async", "dirsync", "discard", "nodiscard",
})
FS_MOUNT_FLAGS: Mapping[str, frozenset[str]] = {
    "ext4": frozenset({"acl", "user_xattr", "barrier", "nobarrier", "norecovery"}),
    "xfs": frozenset({"inode64", "largeio", "norecovery"}),
    "btrfs": frozenset({
        "acl", "noacl", "barrier", "nobarrier", "ssd", "nossd", "autodefrag", "noautodefrag",
        "norecovery",
    }),
}
# fmt: on
# The kernel refuses these on a read-write mount.
READ_ONLY_MOUNT_FLAGS = frozenset({"norecovery"})
SAFE_MOUNT_FLAGS = GENERIC_MOUNT_FLAGS.union(*FS_MOUNT_FLAGS.values())

_NUMBER = re.compile(r"[0-9]{1,9}")
_SIZE = re.compile(r"([0-9]{1,10})([kKmMgG]?)")
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
# ext4 refuses a commit interval above INT_MAX / HZ (2147483 s at HZ=1000); a day is plenty.
_MAX_COMMIT_S = 86400
ValueCheck = Callable[[str], bool]


def _number(value: str) -> bool:
    return _NUMBER.fullmatch(value) is not None


def _seconds(value: str) -> bool:
    return _number(value) and int(value) <= _MAX_COMMIT_S


def _one_of(*choices: str) -> ValueCheck:
    return frozenset(choices).__contains__


def _matches(pattern: str) -> ValueCheck:
    compiled = re.compile(pattern)
    return lambda value: compiled.fullmatch(value) is not None


def _power_of_two_size(low: int, high: int) -> ValueCheck:
    def check(value: str) -> bool:
        match = _SIZE.fullmatch(value)
        if match is None:
            return False
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
        return low <= size <= high and size & (size - 1) == 0

    return check


_COMPRESS = r"zlib(:[1-9])?|lzo|zstd(:([1-9]|1[0-5]))?"
# Flags with a value: each value is checked by shape (and range), never passed on as free
# text. errors=panic is left out on purpose: one tenant's corrupt volume must not crash the
# node.
FS_VALUED_FLAGS: Mapping[str, Mapping[str, ValueCheck]] = {
    "ext4": {
        "commit": _seconds,
        "stripe": _number,
        "max_batch_time": _number,
        "min_batch_time": _number,
        "data": _one_of("ordered", "writeback", "journal"),
        "errors": _one_of("continue", "remount-ro"),
    },
    "xfs": {
        "logbufs": _one_of(*map(str, range(2, 9))),
        "allocsize": _power_of_two_size(4 << 10, 1 << 30),
        "logbsize": _power_of_two_size(16 << 10, 256 << 10),
    },
    "btrfs": {
        "commit": _seconds,
        "compress": _matches(f"{_COMPRESS}|no"),
        "compress-force": _matches(_COMPRESS),
        "space_cache": _one_of("v2"),
    },
}
# mount(8) hands the options to the kernel in one page; far fewer is all any volume needs.
MAX_MOUNT_OPTIONS_BYTES = 1024


def _allowed_on(name: str, sep: str, value: str, fs_type: str) -> bool:
    if not sep:
        return name in GENERIC_MOUNT_FLAGS or name in FS_MOUNT_FLAGS.get(fs_type, ())
    check = FS_VALUED_FLAGS.get(fs_type, {}).get(name)
    return check is not None and check(value)


def mount_flag(flag: str, operator_allowed: frozenset[str] = frozenset()) -> str:
    """A flag that some supported filesystem accepts (or that the operator allowed)."""
    if flag in operator_allowed:
        return flag
    name, sep, value = flag.partition("=")
    if not any(_allowed_on(name, sep, value, fs) for fs in FS_MOUNT_FLAGS):
        raise InvalidArgument(f"mount flag {flag!r} is not allowed")
    return flag


# Never allowed, not even by the operator: they turn the mount into something else (a bind,
# a move, a remount of whatever is mounted, a loop device over another file) or hand
# libmount a helper or another path.
_NEVER_ALLOWED = frozenset({"bind", "rbind", "move", "remount", "loop", "offset", "sizelimit"})
_NEVER_ALLOWED_PREFIXES = ("x-", "make-", "helper")
_UNSAFE_CHARS = re.compile(r"[\s,/\\\x00-\x1f\x7f\"']")


def operator_mount_flag(flag: str) -> str:
    """An extra flag the operator allows (`--allow-mount-flag`): exact text, one option.

    Raises ValueError (the CLI reports it) for a flag that no operator setting can make
    safe: several options in one, another path, a bind, move, remount or loop mount.
    """
    name = flag.partition("=")[0].lower()
    if not name or _UNSAFE_CHARS.search(flag):
        raise ValueError(
            f"mount flag {flag!r} must be one option without ',', '/', quotes or spaces"
        )
    if name in _NEVER_ALLOWED or name.startswith(_NEVER_ALLOWED_PREFIXES):
        raise ValueError(f"mount flag {flag!r} can never be allowed")
    return flag


def _is_read_only(cap: Capability) -> bool:
    if cap.access_mode is AccessMode.SINGLE_NODE_READER_ONLY:
        return True  # the engine appends "ro" last
    last = [f for f in cap.mount_flags if f in ("ro", "rw")]
    return bool(last) and last[-1] == "ro"


def mount_flags(
    cap: Capability, field: str, operator_allowed: frozenset[str] = frozenset()
) -> None:
    """Every flag of a mount capability is allowed on the filesystem it names.

    A filesystem-specific flag needs the capability to name that filesystem: without
    fs_type a volume is mounted with whatever filesystem it holds, which may not know it.
    """
    where = f"{field}.mount.mount_flags"
    options = ",".join(cap.mount_flags)
    if len(options.encode("utf-8", "surrogatepass")) > MAX_MOUNT_OPTIONS_BYTES:
        raise InvalidArgument(
            f"{where} add up to more than {MAX_MOUNT_OPTIONS_BYTES} bytes of mount options"
        )
    for flag in cap.mount_flags:
        mount_flag(flag, operator_allowed)
        if flag in operator_allowed:
            continue
        name, sep, value = flag.partition("=")
        if not _allowed_on(name, sep, value, cap.fs_type):
            fs = cap.fs_type or "a capability without fs_type"
            raise InvalidArgument(f"{where}: {flag!r} is not allowed on {fs}")
        if flag in READ_ONLY_MOUNT_FLAGS and not _is_read_only(cap):
            raise InvalidArgument(f"{where}: {flag!r} needs a read-only mount (add 'ro')")


def node_capability(
    message: csi.VolumeCapability | None, operator_allowed: frozenset[str] = frozenset()
) -> Capability:
    cap = capability(message, "volume_capability")
    mount_flags(cap, "volume_capability", operator_allowed)
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


def stage(
    req: csi.NodeStageVolumeRequest,
    roots: Sequence[Path] = (),
    operator_allowed: frozenset[str] = frozenset(),
) -> StageVolume:
    string_map(req.secrets, "secrets")
    string_map(req.publish_context, "publish_context")
    volume_id = string(req.volume_id, "volume_id")
    staging = path(req.staging_target_path, "staging_target_path", roots)
    return StageVolume(
        volume_id=volume_id,
        staging_path=staging,
        capability=node_capability(req.volume_capability, operator_allowed),
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


def _ephemeral_size(context: Mapping[str, str]) -> None:
    raw = context.get(EPHEMERAL_SIZE_KEY)
    if raw is None:
        return
    try:
        size = parse_size(raw)
    except ConfigError as exc:
        raise InvalidArgument(f"volume_context {EPHEMERAL_SIZE_KEY}: {exc}") from None
    if size > MAX_INT64:
        raise InvalidArgument(
            f"volume_context {EPHEMERAL_SIZE_KEY} {raw!r} is more than CSI can express"
        )


def publish(
    req: csi.NodePublishVolumeRequest,
    roots: Sequence[Path] = (),
    operator_allowed: frozenset[str] = frozenset(),
) -> PublishVolume:
    string_map(req.secrets, "secrets")
    string_map(req.publish_context, "publish_context")
    volume_id = string(req.volume_id, "volume_id")
    target = path(req.target_path, "target_path", roots)
    cap = node_capability(req.volume_capability, operator_allowed)
    context = string_map(req.volume_context, "volume_context")
    staging = req.staging_target_path
    # Inline ephemeral volumes have no staging path: the driver stages them itself.
    if is_ephemeral(context):
        _ephemeral_size(context)
        if VOLUME_ID_RE.fullmatch(volume_id):
            # kubelet names inline volumes "csi-<hash>"; one named like a volume of this
            # driver would shadow that volume in every later node call.
            raise InvalidArgument(
                f"volume_id {volume_id!r} of an inline ephemeral volume must not have the "
                "form of this driver's volume ids"
            )
    else:
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
