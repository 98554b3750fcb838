"""What the kubelet hands a Flexvolume driver, checked and turned into plain values.

The options JSON is a flat string map: the kubelet's own keys (`kubernetes.io/...`) and
the user's `options` from the flexVolume source. The user's keys are `volumeName`,
`size`, `ephemeral`, and otherwise the StorageClass parameters of the CSI path, checked
by the same table (aiocsi.engine.parameters).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from aiocsi.config import ConfigError, parse_size
from aiocsi.engine.parameters import VOLUME_PARAMETERS, normalise
from aiocsi.errors import InvalidArgument
from aiocsi.flexvolume.install import DRIVER_DIR, DRIVER_NAME
from aiocsi.host.fs import SUPPORTED_FS_TYPES

KUBELET_PREFIX = "kubernetes.io/"
SECRET_PREFIX = "kubernetes.io/secret/"  # noqa: S105 - a key prefix, no secret
FS_TYPE = "kubernetes.io/fsType"
READ_WRITE = "kubernetes.io/readwrite"
PV_OR_VOLUME_NAME = "kubernetes.io/pvOrVolumeName"
VOLUME_NAME = "volumeName"
SIZE = "size"
EPHEMERAL = "ephemeral"
OWN_KEYS = frozenset({VOLUME_NAME, SIZE, EPHEMERAL})
DEFAULT_FS = "ext4"
MAX_NAME_BYTES = 253  # a Kubernetes object name (a PV name) at most
MAX_PATH_BYTES = 4096
MAX_INT64 = 2**63 - 1
# <kubelet root>/pods/<pod uid>/volumes/<vendor>~<driver>/<volume>: the kubelet's layout.
_POD_DIR = re.compile(
    rf"(?P<root>/.*)/pods/(?P<uid>[^/]+)/volumes/{re.escape(DRIVER_DIR)}/(?P<volume>[^/]+)"
)


@dataclass(frozen=True)
class MountOptions:
    name: str
    fs_type: str
    read_only: bool
    size_bytes: int  # 0: the driver's --default-volume-size
    ephemeral: bool
    parameters: dict[str, str]


@dataclass(frozen=True)
class PodDir:
    """A pod's volume directory, as the kubelet lays it out."""

    path: str
    kubelet_root: str
    pod_uid: str
    volume: str

    def staging_path(self, volume_id: str) -> str:
        """Where a volume is staged once for every pod on the node: the kubelet's own
        global-mount directory for this driver, under the same (allowed) kubelet root."""
        return (
            f"{self.kubelet_root}/plugins/kubernetes.io/flexvolume/{DRIVER_NAME}/mounts/{volume_id}"
        )

    @property
    def pod_volume_id(self) -> str:
        """The id a pod-scoped volume goes by: one per pod and pod volume."""
        return f"flexvolume:{self.pod_uid}:{self.volume}"


def secret_values(options: Mapping[str, object]) -> frozenset[str]:
    return frozenset(
        v for k, v in options.items() if k.startswith(SECRET_PREFIX) and isinstance(v, str) and v
    )


def strings(options: object) -> dict[str, str]:
    """The options as a string map, without secrets (aiocsi has no use for them)."""
    if not isinstance(options, dict):
        raise InvalidArgument("the options must be a JSON object")
    result: dict[str, str] = {}
    for key, value in options.items():
        if key.startswith(SECRET_PREFIX):
            continue
        if not isinstance(value, str):
            raise InvalidArgument(f"option {key!r} must be a string, not {type(value).__name__}")
        result[key] = value
    return result


def _name(value: str, what: str) -> str:
    if not value:
        raise InvalidArgument(f"{what} is empty")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidArgument(f"{what} is longer than {MAX_NAME_BYTES} bytes")
    if "\x00" in value:
        raise InvalidArgument(f"{what} must not contain NUL characters")
    return value


def volume_name(options: Mapping[str, str]) -> str:
    if options.get(VOLUME_NAME):
        return _name(options[VOLUME_NAME], "option volumeName")
    if options.get(PV_OR_VOLUME_NAME):
        return _name(options[PV_OR_VOLUME_NAME], PV_OR_VOLUME_NAME)
    raise InvalidArgument(f"the options name no volume (set volumeName, or {PV_OR_VOLUME_NAME})")


def _size(options: Mapping[str, str]) -> int:
    raw = options.get(SIZE, "")
    if not raw:
        return 0
    try:
        size = parse_size(raw)
    except ConfigError as exc:
        raise InvalidArgument(f"option size: {exc}") from None
    if size > MAX_INT64:
        raise InvalidArgument(f"option size {raw!r} is too large")
    return size


def _fs_type(options: Mapping[str, str]) -> str:
    fs_type = options.get(FS_TYPE, "") or DEFAULT_FS
    if fs_type not in SUPPORTED_FS_TYPES:
        supported = ", ".join(sorted(SUPPORTED_FS_TYPES))
        raise InvalidArgument(f"fsType {fs_type!r} is not supported (supported: {supported})")
    return fs_type


def _read_only(options: Mapping[str, str]) -> bool:
    mode = options.get(READ_WRITE, "rw") or "rw"
    if mode not in ("ro", "rw"):
        raise InvalidArgument(f"{READ_WRITE} {mode!r} is neither ro nor rw")
    return mode == "ro"


def _ephemeral(options: Mapping[str, str]) -> bool:
    value = options.get(EPHEMERAL, "false").strip().lower()
    if value not in ("true", "false"):
        raise InvalidArgument(f"option ephemeral {options[EPHEMERAL]!r} is neither true nor false")
    return value == "true"


def _parameters(options: Mapping[str, str]) -> dict[str, str]:
    given = {
        k: v for k, v in options.items() if not k.startswith(KUBELET_PREFIX) and k not in OWN_KEYS
    }
    try:
        return normalise(given, VOLUME_PARAMETERS, "options")
    except InvalidArgument as exc:
        own = ", ".join(sorted(OWN_KEYS))
        raise InvalidArgument(f"{exc}; Flexvolume options also take {own}") from None


def mount_options(options: Mapping[str, str]) -> MountOptions:
    ephemeral = _ephemeral(options)
    parameters = _parameters(options)
    if ephemeral and parameters:
        raise InvalidArgument(
            "a pod-scoped volume (ephemeral: true) takes no StorageClass parameters; "
            f"got {', '.join(sorted(parameters))}"
        )
    return MountOptions(
        name="" if ephemeral else volume_name(options),
        fs_type=_fs_type(options),
        read_only=_read_only(options),
        size_bytes=_size(options),
        ephemeral=ephemeral,
        parameters=parameters,
    )


def directory(value: str, what: str = "the mount dir") -> str:
    """An absolute, normalised directory path (a trailing "/" dropped)."""
    if not value:
        raise InvalidArgument(f"{what} is empty")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES or "\x00" in value:
        raise InvalidArgument(f"{what} is not a usable path")
    if not value.startswith("/"):
        raise InvalidArgument(f"{what} {value!r} must be an absolute path")
    stripped = value.rstrip("/")
    if not stripped or "//" in value or os.path.normpath(value) != stripped:
        raise InvalidArgument(f"{what} {value!r} must be normalised (no '..', '.', or '//')")
    return stripped


def pod_dir(path: str) -> PodDir | None:
    match = _POD_DIR.fullmatch(path)
    if match is None:
        return None
    return PodDir(path, match["root"], match["uid"], match["volume"])


def require_pod_dir(path: str) -> PodDir:
    found = pod_dir(path)
    if found is None:
        shape = PurePosixPath("<kubelet root>/pods/<pod uid>/volumes", DRIVER_DIR, "<volume>")
        raise InvalidArgument(f"{path} is not a kubelet pod volume dir ({shape})")
    return found


def new_bytes(value: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > len(str(MAX_INT64)):
        raise InvalidArgument(f"newSize {value[:32]!r} is not a byte count")
    size = int(value)
    if size > MAX_INT64:
        raise InvalidArgument(f"newSize {value!r} is too large")
    return size
