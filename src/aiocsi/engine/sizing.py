"""How large a new volume is, where it may go, and whether an existing one of the same
name serves a repeated CreateVolume."""

from __future__ import annotations

from aiocsi.config import TOPOLOGY_KEY
from aiocsi.engine.requests import CapacityRange, CreateVolume, TopologyRequirement
from aiocsi.errors import OutOfRange
from aiocsi.host.fs import MIN_FS_SIZE
from aiocsi.host.sysfs import SECTOR_SIZE
from aiocsi.models import AccessType, Capability, Volume

ALIGNMENT = 1024 * 1024  # image sizes are whole MiB: every filesystem and loop device likes that
# Loop devices need whole sectors.
SECTOR = SECTOR_SIZE
DEFAULT_FS = "ext4"


def align_up(size: int) -> int:
    return -(-size // ALIGNMENT) * ALIGNMENT


def minimum_size(capabilities: tuple[Capability, ...]) -> int:
    sizes = [
        MIN_FS_SIZE.get(c.fs_type or DEFAULT_FS, ALIGNMENT)
        for c in capabilities
        if c.access_type is AccessType.MOUNT
    ]
    return max([ALIGNMENT, *sizes])


def choose_size(capacity: CapacityRange, minimum: int, default: int, floor: int = 0) -> int:
    """Pick the image size the spec allows: at least `required`, at most `limit`.

    Sizes are whole MiB when the range allows it; a tight limit falls back to the largest
    whole MiB, then the largest whole sector, that still holds what is needed.
    """
    needed = max(capacity.required_bytes, minimum, floor)
    limit = capacity.limit_bytes
    wanted = capacity.required_bytes or (min(default, limit) if limit else default)
    size = align_up(max(wanted, needed))
    if not limit or size <= limit:
        return size
    for unit in (ALIGNMENT, SECTOR):
        candidate = limit // unit * unit
        if candidate >= needed:
            return candidate
    raise OutOfRange(
        f"cannot fit a volume in limit_bytes={limit}: it needs at least {needed} bytes "
        f"(filesystem minimum {minimum}, content source {floor}), in whole {SECTOR}-byte sectors"
    )


def topology_admits(requirement: TopologyRequirement | None, node_id: str) -> bool:
    """Whether a volume on `node_id` meets `requirement`.

    Only `requisite` constrains: CSI lets the SP choose any topology when it is empty, and
    `preferred` is an ordering within it.
    """
    if requirement is None or not requirement.requisite:
        return True
    return any(
        t.get(TOPOLOGY_KEY) == node_id and set(t) <= {TOPOLOGY_KEY} for t in requirement.requisite
    )


def why_incompatible(existing: Volume, request: CreateVolume, params: dict[str, str]) -> str | None:
    """Why an existing volume of the same name does not satisfy `request`, or None."""
    if not request.capacity.admits(existing.capacity_bytes):
        return f"it has {existing.capacity_bytes} bytes, outside the requested range"
    if existing.source != request.source:
        return "it was created from a different content source"
    if existing.parameters != params:
        return "it was created with different parameters"
    if existing.capacity_bytes < (needed := minimum_size(request.capabilities)):
        return f"its {existing.capacity_bytes} bytes are too few for a {needed}-byte filesystem"
    return None
