"""The pool's provisioning budget, and a full pool as RESOURCE_EXHAUSTED.

Volumes are sparse images, so the pool filesystem can fill while volumes still have room
inside them. The budget (docs/parameters.md, "Capacity") therefore offers

    offered = overcommit x free - (provisioned - allocated)

`free` is measured (statvfs) at every check, so space taken by anything that is not ours
counts at once. `allocated` (st_blocks of every image) would cost a stat per image per
call: the space watch (engine/space.py) keeps it per image in memory, rescanned in a
worker thread every few seconds and updated at once by our own removals and copies. A
stale figure is low when tenants have written since (the offer is then smaller, never
larger, than the truth).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiocsi.errors import ResourceExhausted

if TYPE_CHECKING:
    from pathlib import Path

    from aiocsi.state.store import OverBudget

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class PoolSpace:
    """The pool filesystem's space in bytes, as the budget sees it (for metrics too)."""

    total: int  # size of the pool filesystem
    free: int  # available for new blocks (statvfs f_bavail)
    provisioned: int  # sizes of our volumes and snapshots
    allocated: int  # blocks our images hold (st_blocks x 512)
    foreign: int  # used by anything else: used - allocated, never below 0

    @property
    def unallocated(self) -> int:
        """What our sparse images may still allocate."""
        return max(self.provisioned - self.allocated, 0)

    def offer(self, overcommit: float, *, preallocated: bool = False) -> int:
        offered = max(int(self.free * overcommit) - self.unallocated, 0)
        return min(offered, self.free) if preallocated else offered


def statvfs(root: Path) -> tuple[int, int, int]:
    """Total, used and available bytes of the filesystem holding `root`."""
    st = os.statvfs(root)
    return (
        st.f_blocks * st.f_frsize,
        (st.f_blocks - st.f_bfree) * st.f_frsize,
        st.f_bavail * st.f_frsize,
    )


class PoolBudget:
    """One budget measurement: call it (in any thread) to measure; it keeps the figures.

    Passed to the store, it is measured in the store thread, inside the write that checks
    it: `provisioned + wanted <= overcommit x free + allocated` there is `wanted <= offered`.
    """

    def __init__(self, root: Path, overcommit: float, allocated: int) -> None:
        self._root = root
        self._overcommit = overcommit
        self.allocated = allocated
        self.free = 0
        self.value = 0

    def __call__(self) -> int:
        _, _, self.free = statvfs(self._root)
        self.value = int(self.free * self._overcommit) + self.allocated
        return self.value

    def offer(self, provisioned: int, *, preallocated: bool = False) -> int:
        space = PoolSpace(0, self.free, provisioned, self.allocated, 0)
        return space.offer(self._overcommit, preallocated=preallocated)

    def exhausted(self, what: str, exc: OverBudget) -> ResourceExhausted:
        oc = self._overcommit
        unallocated = max(exc.provisioned - self.allocated, 0)
        left = max(int(self.free * oc) - unallocated, 0)
        return ResourceExhausted(
            f"the pool {self._root} cannot hold {what} of {exc.wanted} bytes: "
            f"{left} bytes are left ({self.free} bytes free on its filesystem x overcommit "
            f"{oc}, minus {unallocated} bytes that the {exc.provisioned} bytes already "
            "provisioned may still allocate)"
        )

    def too_big_to_preallocate(self, what: str, wanted: int) -> ResourceExhausted | None:
        """Preallocated bytes need real free space, whatever the overcommit."""
        if wanted <= self.free:
            return None
        return ResourceExhausted(
            f"the pool filesystem {self._root} has {self.free} bytes free; {what} needs {wanted}"
        )


def out_of_space(what: str, pool: Path, exc: OSError) -> ResourceExhausted | None:
    """ENOSPC/EDQUOT from the pool filesystem as RESOURCE_EXHAUSTED; None for other errors."""
    if exc.errno not in _NO_SPACE:
        return None
    return ResourceExhausted(
        f"{what}: the pool filesystem {pool} is out of space "
        f"({errno.errorcode[exc.errno]}); nothing was left behind"
    )


@contextmanager
def no_space_is_exhaustion(what: str, pool: Path) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT from the pool filesystem into RESOURCE_EXHAUSTED."""
    try:
        yield
    except OSError as exc:
        if (exhausted := out_of_space(what, pool, exc)) is not None:
            raise exhausted from exc
        raise
