"""Wall time of the installed executable per call, exec'd as the kubelet does.

`AIOCSI_FLEX_TIMING_N=30 pytest tests/system/test_flexvolume_timing.py -s` prints the
figures docs/flexvolume.md quotes; every call must succeed for them to count.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import pytest

from .flexvolume_kubelet import flex_driver, install, kubelet_options

POD = "0b6c3c1e-8f2a-4f0e-9d55-1a2b3c4d5e6f"
N = int(os.environ.get("AIOCSI_FLEX_TIMING_N", "5"))


async def test_mount_and_unmount_wall_time(
    cleanup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kubelet = install(cleanup)
    init_ms = kubelet.timed(N, "init")
    mounts: list[float] = []
    unmounts: list[float] = []
    async with flex_driver(cleanup):
        target = kubelet.pod_dir(POD, "bench")
        options = kubelet_options("bench", POD)
        for _ in range(N + 1):  # the first mount also creates and formats: not counted
            started = time.perf_counter()
            kubelet.ok("mount", str(target), options)
            mounted = time.perf_counter()
            kubelet.ok("unmount", str(target))
            mounts.append((mounted - started) * 1000)
            unmounts.append((time.perf_counter() - mounted) * 1000)
            target.mkdir(mode=0o750, exist_ok=True)
    with capsys.disabled():
        print(  # noqa: T201 - the figures are the point
            f"\nflexvolume n={N}: init {init_ms:.1f} ms, first mount {mounts[0]:.1f} ms, "
            f"mount {statistics.median(mounts[1:]):.1f} ms, "
            f"unmount {statistics.median(unmounts):.1f} ms (medians)"
        )
    assert init_ms < 150
