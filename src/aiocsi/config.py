"""The driver's one frozen configuration, built and validated at start."""

from __future__ import annotations

import enum
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

# sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107
DEFAULT_ENDPOINT = "unix:///run/aiocsi/csi.sock"
DEFAULT_DRIVER_NAME = "loop.csi.aiocsi.dev"
DEFAULT_POOL = "/var/lib/aiocsi"
TOPOLOGY_KEY = "topology.aiocsi.dev/node"
DEFAULT_MAX_OPERATIONS = 64
MiB = 1024 * 1024
GiB = 1024 * MiB


class ConfigError(ValueError):
    """A setting is unusable; the message is one line naming it."""


class Mode(enum.StrEnum):
    ALL = "all"
    CONTROLLER = "controller"
    NODE = "node"

    @property
    def serves_controller(self) -> bool:
        return self in (Mode.ALL, Mode.CONTROLLER)

    @property
    def serves_node(self) -> bool:
        return self in (Mode.ALL, Mode.NODE)


class LogFormat(enum.StrEnum):
    JSON = "json"
    CONSOLE = "console"


class EventLoop(enum.StrEnum):
    """The event loop implementation `aiocsi serve` runs on."""

    UVLOOP = "uvloop"
    ASYNCIO = "asyncio"


@dataclass(frozen=True)
class Config:
    socket_path: Path
    node_id: str
    driver_name: str = DEFAULT_DRIVER_NAME
    mode: Mode = Mode.ALL
    socket_mode: int = 0o660
    pool: Path = Path(DEFAULT_POOL)
    log_format: LogFormat = LogFormat.JSON
    log_level: str = "info"
    event_loop: EventLoop = EventLoop.UVLOOP
    shutdown_grace: float = 30.0
    enable_attach: bool = False
    # A cluster-wide resizer reaches only one node's driver, so node-local deployments
    # turn this off and grow volumes through NodeExpandVolume (docs/architecture.md, "Deployment").
    controller_expand: bool = True
    max_volumes_per_node: int = 0
    overcommit: float = 1.0
    max_operations: int = DEFAULT_MAX_OPERATIONS
    max_mkfs: int = 4
    default_volume_size: int = GiB
    allowed_path_roots: tuple[Path, ...] = field(default=(Path("/var/lib/kubelet"),))
    # Mount flags the operator allows beyond the built-in list (docs/security.md).
    allowed_mount_flags: frozenset[str] = frozenset()
    # (host, port) of /metrics, /healthz and /readyz; None = not served. Host "" = every
    # interface.
    http_endpoint: tuple[str, int] | None = None
    # The Flexvolume front end's socket (docs/flexvolume.md); None: not served.
    flexvolume_socket_path: Path | None = None


def parse_endpoint(endpoint: str) -> Path:
    """Accept `unix:///abs/path` or `/abs/path`; refuse anything else in one line."""
    raw = endpoint.strip()
    if "://" in raw:
        scheme, _, rest = raw.partition("://")
        if scheme != "unix":
            raise ConfigError(
                f"endpoint {endpoint!r}: only unix sockets are supported (unix:///abs/path)"
            )
        raw = rest
    if not raw.startswith("/"):
        raise ConfigError(f"endpoint {endpoint!r}: the socket path must be absolute")
    path = Path(os.path.normpath(raw))
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH_BYTES:
        raise ConfigError(
            f"endpoint {endpoint!r}: socket path is {size} bytes; "
            f"unix sockets allow at most {MAX_SOCKET_PATH_BYTES}"
        )
    return path


def parse_http_endpoint(value: str) -> tuple[str, int] | None:
    """`HOST:PORT`, `:PORT` (every interface) or `[::1]:PORT`; "" means off."""
    text = value.strip()
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:  # noqa: PLR2004 - TCP
        raise ConfigError(f"http endpoint {value!r}: expected HOST:PORT, e.g. :9808")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"http endpoint {value!r}: put an IPv6 address in brackets")
    return host, int(port)


def parse_mode(value: str) -> Mode:
    try:
        return Mode(value)
    except ValueError:
        choices = ", ".join(m.value for m in Mode)
        raise ConfigError(f"mode {value!r}: expected one of {choices}") from None


def parse_octal_mode(value: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        raise ConfigError(f"socket mode {value!r}: expected octal digits like 0660") from None
    if not 0 <= mode <= 0o777:  # noqa: PLR2004 - permission bits
        raise ConfigError(f"socket mode {value!r}: must be between 000 and 777")
    return mode


_SIZE_UNITS = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
}


def parse_size(value: str) -> int:
    """Parse `1073741824`, `512Mi`, `1Gi`, `10G` (Kubernetes quantity style) into bytes."""
    text = value.strip()
    digits = text.rstrip("KMGTkmgtiI")
    unit = text[len(digits) :].lower()
    if not digits.isdigit() or unit not in _SIZE_UNITS:
        raise ConfigError(f"size {value!r}: expected an integer with an optional Ki/Mi/Gi/Ti unit")
    return int(digits) * _SIZE_UNITS[unit]


def default_node_id() -> str:
    return os.environ.get("KUBE_NODE_NAME") or os.environ.get("NODE_ID") or socket.gethostname()


def validate(config: Config) -> Config:  # noqa: C901 - one flat check per setting
    """Cross-field checks that a single flag parser cannot make."""
    if not config.node_id or len(config.node_id.encode()) > 128:  # noqa: PLR2004 - CSI limit
        raise ConfigError("node id must be 1..128 bytes")
    if not config.driver_name or len(config.driver_name) > 63:  # noqa: PLR2004 - CSI limit
        raise ConfigError("driver name must be 1..63 characters")
    if not config.pool.is_absolute():
        raise ConfigError(f"pool {config.pool}: must be an absolute path")
    if config.shutdown_grace < 0:
        raise ConfigError("shutdown grace must be >= 0 seconds")
    if config.overcommit <= 0:
        raise ConfigError("overcommit ratio must be > 0")
    if config.max_operations < 1 or config.max_mkfs < 1:
        raise ConfigError("--max-operations and --max-mkfs must be >= 1")
    if config.max_volumes_per_node < 0:
        raise ConfigError("--max-volumes-per-node must be >= 0 (0 = no limit)")
    if config.flexvolume_socket_path == config.socket_path:
        raise ConfigError("--flexvolume-endpoint must not be the CSI --endpoint")
    for root in config.allowed_path_roots:
        if not root.is_absolute():
            raise ConfigError(f"allowed path root {root}: must be absolute")
    return config
