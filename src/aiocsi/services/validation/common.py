"""Checks every service shares: sizes (CSI: strings <= 128 bytes, maps <= 4 KiB), ids,
capabilities and capacity ranges. Everything raises InvalidArgument naming the field.

`request_limits` applies the size limits to every string and map of any request, at any
depth; the server runs it on each message before a handler sees it, so no RPC (served or
not) can slip an oversized field past the per-service checks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from aiocsi._proto.csi import v1 as csi
from aiocsi.engine import policy
from aiocsi.engine.requests import CapacityRange
from aiocsi.errors import InvalidArgument
from aiocsi.models import AccessType, Capability

MAX_STRING_BYTES = 128
MAX_MAP_BYTES = 4096
MAX_PATH_BYTES = 4096
# Fields whose limit the spec raises above 128 bytes: paths "up to the maximum path length
# of the operating system" (PATH_MAX).
PATH_FIELDS = frozenset({"staging_target_path", "target_path", "volume_path"})
_UTF8_MAX_BYTES_PER_CHAR = 4
Mode = csi.VolumeCapabilityAccessModeMode


def _utf8_size(value: str) -> int:
    return len(value.encode("utf-8", "surrogatepass"))


def _limit_size(value: str, field: str, limit: int) -> None:
    # Most strings are short: only count bytes when the characters could exceed the limit.
    if len(value) * _UTF8_MAX_BYTES_PER_CHAR > limit and (size := _utf8_size(value)) > limit:
        raise InvalidArgument(f"{field} is {size} bytes; at most {limit} are allowed")


def string(value: str, field: str, *, required: bool = True, limit: int = MAX_STRING_BYTES) -> str:
    if not value:
        if required:
            raise InvalidArgument(f"{field} is required")
        return value
    _limit_size(value, field, limit)
    if "\x00" in value:
        raise InvalidArgument(f"{field} must not contain NUL characters")
    return value


def string_map(value: Mapping[str, str], field: str) -> dict[str, str]:
    size = sum(_utf8_size(k) + _utf8_size(v) for k, v in value.items())
    if size > MAX_MAP_BYTES:
        raise InvalidArgument(f"{field} is {size} bytes; at most {MAX_MAP_BYTES} are allowed")
    return dict(value)


def capacity(message: csi.CapacityRange | None) -> CapacityRange:
    if message is None:
        return CapacityRange()
    return policy.capacity_range(message.required_bytes, message.limit_bytes)


def capability(message: csi.VolumeCapability | None, field: str) -> Capability:
    """Convert one VolumeCapability; the engine's policy then says whether it can be served."""
    if message is None:
        raise InvalidArgument(f"{field} is required")
    mode_message = message.access_mode
    if mode_message is None or mode_message.mode == Mode.UNKNOWN:
        raise InvalidArgument(f"{field}.access_mode is required")
    mode_name = mode_message.mode.name if isinstance(mode_message.mode, Mode) else None
    mode = policy.access_mode(mode_name or str(mode_message.mode), field)
    if message.mount is not None and message.block is not None:
        raise InvalidArgument(f"{field} sets both block and mount; choose one")
    if message.block is not None:
        return Capability(AccessType.BLOCK, mode)
    if message.mount is None:
        raise InvalidArgument(f"{field} needs an access type (block or mount)")
    flags = tuple(string(f, f"{field}.mount.mount_flags") for f in message.mount.mount_flags)
    # What a group id may be is the engine's policy (policy.mount_group).
    group = string(
        message.mount.volume_mount_group, f"{field}.mount.volume_mount_group", required=False
    )
    return Capability(AccessType.MOUNT, mode, message.mount.fs_type, flags, group)


def capabilities(messages: Sequence[csi.VolumeCapability], field: str) -> tuple[Capability, ...]:
    if not messages:
        raise InvalidArgument(f"{field} is required")
    return tuple(capability(m, f"{field}[{i}]") for i, m in enumerate(messages))


def _field_limits(value: object, field: str, name: str) -> None:
    if isinstance(value, str):
        _limit_size(value, field, MAX_PATH_BYTES if name in PATH_FIELDS else MAX_STRING_BYTES)
    elif isinstance(value, Mapping):
        string_map(value, field)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _field_limits(item, f"{field}[{index}]", name)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        request_limits(value, field)


def request_limits(message: object, prefix: str = "") -> None:
    """The spec's general size limits on every string and map of `message`, at any depth.

    Map sizes count the UTF-8 bytes of keys and values. Path fields may be as long as
    PATH_MAX; the per-service checks add what each field means on top of this.
    """
    for spec in dataclasses.fields(message):  # type: ignore[arg-type]
        value = getattr(message, spec.name)
        if value is None:
            continue
        _field_limits(value, f"{prefix}.{spec.name}" if prefix else spec.name, spec.name)
