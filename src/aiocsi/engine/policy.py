"""What a volume may ask for, whichever front end asks: access modes, filesystems, mount
flags, sizes, inline-volume parameters. Enforced by the engine on every request; the front
ends only translate their wire format into engine requests.

Everything here raises `InvalidArgument` naming the field, in the CSI front end's field
names (a front end with other names says so in its own translation).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType

from aiocsi.config import ConfigError, parse_size
from aiocsi.engine.parameters import MUTABLE_PARAMETERS, VOLUME_PARAMETERS, normalise
from aiocsi.engine.requests import CapacityRange, CreateVolume, PublishVolume, StageVolume
from aiocsi.errors import InvalidArgument
from aiocsi.host.fs import SUPPORTED_FS_TYPES
from aiocsi.models import VOLUME_ID_RE, AccessMode, AccessType, Capability

# The largest size a volume can have: CSI carries sizes as int64.
MAX_SIZE_BYTES = 2**63 - 1

# -- access modes -------------------------------------------------------------------------

# Volumes are files on this node's disk: no mode that shares one between nodes.
MULTI_NODE_MODES = frozenset(
    {"MULTI_NODE_READER_ONLY", "MULTI_NODE_SINGLE_WRITER", "MULTI_NODE_MULTI_WRITER"}
)


def access_mode(name: str, field: str) -> AccessMode:
    """The access mode called `name` (the CSI spec's enum names)."""
    if name in MULTI_NODE_MODES:
        raise InvalidArgument(
            f"{field}.access_mode {name} is not supported: "
            "volumes are node-local (use a SINGLE_NODE_* mode)"
        )
    try:
        return AccessMode(name)
    except ValueError:
        raise InvalidArgument(f"{field}.access_mode {name} is unknown") from None


# -- sizes --------------------------------------------------------------------------------


def capacity_range(required: int, limit: int) -> CapacityRange:
    """A range of sizes in bytes; 0 means "no bound" for either."""
    if required < 0 or limit < 0:
        raise InvalidArgument("capacity_range values must not be negative")
    if limit and required > limit:
        raise InvalidArgument(
            f"capacity_range.required_bytes ({required}) exceeds limit_bytes ({limit})"
        )
    return CapacityRange(required, limit)


# -- inline ephemeral volumes -------------------------------------------------------------

# The volume_context key a CO sets on an inline ephemeral volume (CSI's Kubernetes key).
EPHEMERAL_KEY = "csi.storage.k8s.io/ephemeral"
# The volume_context key of an inline ephemeral volume's size (docs/parameters.md).
EPHEMERAL_SIZE_KEY = "size"
DEFAULT_EPHEMERAL_SIZE = "1Gi"
# Inline volumes are recorded under this prefix and the CO's volume id.
EPHEMERAL_PREFIX = "ephemeral:"


def is_ephemeral(context: Mapping[str, str]) -> bool:
    return context.get(EPHEMERAL_KEY, "").lower() == "true"


def ephemeral_size(context: Mapping[str, str]) -> int:
    """The size an inline ephemeral volume asks for in its volume_context, in bytes."""
    raw = context.get(EPHEMERAL_SIZE_KEY, DEFAULT_EPHEMERAL_SIZE)
    try:
        size = parse_size(raw)
    except ConfigError as exc:
        raise InvalidArgument(f"volume_context {EPHEMERAL_SIZE_KEY}: {exc}") from None
    if size > MAX_SIZE_BYTES:
        raise InvalidArgument(
            f"volume_context {EPHEMERAL_SIZE_KEY} {raw!r} is more than CSI can express"
        )
    return size


def ephemeral_volume_id(volume_id: str, capability: Capability) -> None:
    """An inline volume's id and capability are ones this driver can serve inline."""
    if VOLUME_ID_RE.fullmatch(volume_id):
        # kubelet names inline volumes "csi-<hash>"; one named like a volume of this
        # driver would shadow that volume in every later node call.
        raise InvalidArgument(
            f"volume_id {volume_id!r} of an inline ephemeral volume must not have the "
            "form of this driver's volume ids"
        )
    if capability.access_type is not AccessType.MOUNT:
        raise InvalidArgument("ephemeral inline volumes must use the mount access type")


# -- mount flags --------------------------------------------------------------------------

# Mount flags a volume may ask for. Anything that changes device or setuid semantics
# (suid, dev, exec), names another path or identity (uid=, context=), binds, moves or
# remounts is refused: a flag is a tenant's wish, and the mount runs as root on the node.
# The lists below were measured with mount(8) from util-linux 2.38 on Linux 6.18: each
# flag mounts on the filesystem it is listed for, so a refused flag is INVALID_ARGUMENT up
# front and never an INTERNAL failure of the mount at NodeStageVolume.
# fmt: off
GENERIC_MOUNT_FLAGS = frozenset({
    "ro", "rw", "noatime", "relatime", "strictatime", "nodiratime", "lazytime", "nolazytime",
    "nosuid", "nodev", "noexec", "sync", "async", "dirsync", "discard", "nodiscard",
})
FS_MOUNT_FLAGS: Mapping[str, frozenset[str]] = MappingProxyType({
    "ext4": frozenset({"acl", "user_xattr", "barrier", "nobarrier", "norecovery"}),
    "xfs": frozenset({"inode64", "largeio", "norecovery"}),
    "btrfs": frozenset({
        "acl", "noacl", "barrier", "nobarrier", "ssd", "nossd", "autodefrag", "noautodefrag",
        "norecovery",
    }),
})
# fmt: on
# The kernel refuses these on a read-write mount.
READ_ONLY_MOUNT_FLAGS = frozenset({"norecovery"})
SAFE_MOUNT_FLAGS = GENERIC_MOUNT_FLAGS.union(*FS_MOUNT_FLAGS.values())

_NUMBER = re.compile(r"[0-9]{1,9}")
# A mount option's size: digits and an optional one-letter binary unit (allocsize=64k).
_OPTION_SIZE = re.compile(r"([0-9]{1,10})([kKmMgG]?)")
_OPTION_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
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
        match = _OPTION_SIZE.fullmatch(value)
        if match is None:
            return False
        size = int(match.group(1)) * _OPTION_SIZE_UNITS[match.group(2).lower()]
        return low <= size <= high and size & (size - 1) == 0

    return check


_COMPRESS = r"zlib(:[1-9])?|lzo|zstd(:([1-9]|1[0-5]))?"
# Flags with a value: each value is checked by shape (and range), never passed on as free
# text. errors=panic is left out on purpose: one tenant's corrupt volume must not crash the
# node.
FS_VALUED_FLAGS: Mapping[str, Mapping[str, ValueCheck]] = MappingProxyType(
    {
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
)
# The kernel takes the options in one page; far fewer is all any volume needs.
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


def is_read_only(cap: Capability) -> bool:
    """Whether a mount capability mounts read-only (of its ro/rw flags, the last wins)."""
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
        if flag in READ_ONLY_MOUNT_FLAGS and not is_read_only(cap):
            raise InvalidArgument(f"{where}: {flag!r} needs a read-only mount (add 'ro')")


# -- mount groups -------------------------------------------------------------------------

# gid_t is 32 bits; (gid_t)-1 means "leave the group as it is" to chown(2), so it is no id.
MAX_GID = 2**32 - 2


def mount_group(cap: Capability, field: str) -> int | None:
    """The group id a mount capability's volume_mount_group names; None when it has none.

    Only the canonical decimal form is accepted ("2000", not "+2000", " 2000" or "02000"):
    the recorded capability compares as text, so one group has one spelling.
    """
    raw = cap.mount_group
    if not raw:
        return None
    where = f"{field}.mount.volume_mount_group"
    if not (raw.isascii() and raw.isdigit()) or raw != str(int(raw)):
        raise InvalidArgument(
            f"{where} {raw!r} must be a numeric group id in decimal (e.g. '2000'); "
            "group names, signs and leading zeros are not accepted"
        )
    gid = int(raw)
    if gid > MAX_GID:
        raise InvalidArgument(f"{where} {raw!r} is out of range (0 to {MAX_GID})")
    return gid


# -- capabilities -------------------------------------------------------------------------


def filesystem(cap: Capability, field: str) -> None:
    """`cap` names no filesystem, or one this driver makes."""
    if cap.fs_type and cap.fs_type not in SUPPORTED_FS_TYPES:
        raise InvalidArgument(
            f"{field}.mount.fs_type {cap.fs_type!r} is not supported "
            f"(supported: {', '.join(sorted(SUPPORTED_FS_TYPES))})"
        )


def capability(cap: Capability, field: str, operator_allowed: frozenset[str]) -> None:
    """`cap` is one this driver can honour: a filesystem it makes, flags it allows."""
    if cap.access_type is not AccessType.MOUNT:
        return
    filesystem(cap, field)
    mount_flags(cap, field, operator_allowed)
    mount_group(cap, field)


def capabilities(
    caps: tuple[Capability, ...], field: str, operator_allowed: frozenset[str]
) -> None:
    """Capabilities a volume must serve: refused now if NodeStage could never honour them."""
    if not caps:
        raise InvalidArgument(f"{field} is required")
    for index, cap in enumerate(caps):
        capability(cap, f"{field}[{index}]", operator_allowed)


# -- whole requests -----------------------------------------------------------------------


def create_request(request: CreateVolume, operator_allowed: frozenset[str]) -> CreateVolume:
    """`request` as policy allows it, its parameters in their canonical form."""
    parameters = normalise(request.parameters, VOLUME_PARAMETERS, "parameters")
    capabilities(request.capabilities, "volume_capabilities", operator_allowed)
    mutable = normalise(request.mutable_parameters, MUTABLE_PARAMETERS, "mutable_parameters")
    return dataclasses.replace(request, parameters=parameters, mutable_parameters=mutable)


def stage_request(request: StageVolume, operator_allowed: frozenset[str]) -> None:
    capability(request.capability, "volume_capability", operator_allowed)


def publish_request(request: PublishVolume, operator_allowed: frozenset[str]) -> int | None:
    """Check a publish request before anything is made; the size of the inline ephemeral
    volume it asks for, if it is one."""
    capability(request.capability, "volume_capability", operator_allowed)
    if not is_ephemeral(request.volume_context):
        return None
    size = ephemeral_size(request.volume_context)
    ephemeral_volume_id(request.volume_id, request.capability)
    return size
