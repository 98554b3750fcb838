"""Readiness checks behind Identity.Probe: the pool is usable, the loop driver answers and
the host tools exist; and which filesystems this node can serve."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from aiocsi.config import Config
from aiocsi.logging import get_logger
from aiocsi.threads import WorkerPool

log = get_logger("aiocsi.engine")

# Tools without which the node side cannot stage any volume. Mounts and loop devices are
# system calls (host/syscalls.py): no mount(8) or losetup(8) is needed.
NODE_TOOLS = ("blkid", "mkfs.ext4", "e2fsck", "resize2fs")
LOOP_CONTROL = Path("/dev/loop-control")
# The tools each filesystem needs (make, grow). Without one of them the node refuses that
# filesystem at NodeStage and NodePublish; Probe stays ready while ext4's are there.
FS_TOOLS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "ext4": ("mkfs.ext4", "e2fsck", "resize2fs"),
        "xfs": ("mkfs.xfs", "xfs_growfs"),
        "btrfs": ("mkfs.btrfs", "btrfs"),
    }
)


def missing_tools(tools: Iterable[str]) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]


def pool_problem(pool: Path) -> str | None:
    if not pool.is_dir():
        return f"pool directory {pool} does not exist"
    if not os.access(pool, os.W_OK | os.X_OK):
        return f"pool directory {pool} is not writable"
    return None


@dataclass(frozen=True)
class HealthReport:
    problems: tuple[str, ...]
    # Filesystem type -> its tools not found in PATH; only types with a tool missing.
    missing_fs_tools: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return not self.problems

    @property
    def usable_fs_types(self) -> tuple[str, ...]:
        """The filesystems this node can make, mount and grow."""
        return tuple(fs for fs in FS_TOOLS if fs not in self.missing_fs_tools)


class HealthChecker:
    """Answers Probe from the last report, refreshed in the background once it is older
    than `max_age` seconds (with `max_age` 0: checked on every call).

    A livenessprobe or load harness may call Probe hundreds of times a second; the checks
    (a stat of the pool, a PATH search per tool) need not run that often, and the call that
    finds the report stale does not wait for a worker thread that is busy under load.
    """

    def __init__(self, config: Config, workers: WorkerPool, max_age: float = 1.0) -> None:
        self._config = config
        self._workers = workers
        self.max_age = max_age
        self._last: tuple[float, HealthReport] | None = None
        self._refreshing: asyncio.Task[HealthReport] | None = None

    def _check(self) -> HealthReport:
        problems: list[str] = []
        missing_fs: dict[str, tuple[str, ...]] = {}
        if (pool := pool_problem(self._config.pool)) is not None:
            problems.append(pool)
        if self._config.mode.serves_node:
            problems.extend(f"host tool {t!r} not found in PATH" for t in missing_tools(NODE_TOOLS))
            if not LOOP_CONTROL.exists():
                problems.append(f"{LOOP_CONTROL} is missing: is the loop module loaded?")
            for fs_type, tools in FS_TOOLS.items():
                if missing := missing_tools(tools):
                    missing_fs[fs_type] = tuple(missing)
        return HealthReport(tuple(problems), MappingProxyType(missing_fs))

    async def _refresh(self) -> HealthReport:
        now = time.monotonic()
        report = await self._workers.run_sync(self._check)
        previous = self._last[1] if self._last is not None else None
        self._last = (now, report)
        if previous is None or previous.missing_fs_tools != report.missing_fs_tools:
            log.info(
                "filesystems_usable",
                usable=list(report.usable_fs_types),
                missing_tools={fs: list(tools) for fs, tools in report.missing_fs_tools.items()},
            )
        return report

    def _refresh_done(self, task: asyncio.Task[HealthReport]) -> None:
        self._refreshing = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Nobody awaits a background refresh: say why it failed; the next call retries.
            log.warning("health_check_failed", error=str(exc))

    async def check(self) -> HealthReport:
        last = self._last
        if last is None or self.max_age <= 0:
            return await self._refresh()
        if time.monotonic() - last[0] >= self.max_age and self._refreshing is None:
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
            self._refreshing.add_done_callback(self._refresh_done)
        return last[1]

    async def missing_fs_tools(self, fs_type: str) -> tuple[str, ...]:
        """The tools `fs_type` needs that this node lacks (from the last report)."""
        return (await self.check()).missing_fs_tools.get(fs_type, ())
