"""`aiocsi bench scale` as a real process: a spawned driver filled with volumes and
snapshots, its listings, Probe idle and during them, its memory and a restart; afterwards
nothing of the run is left (no pool, no loop device, no mount, no process).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .process import aiocsi_argv
from .test_bench import (
    assert_latency,
    assert_nothing_left,
    assert_op,
    interrupted_run,
    run_bench,
)

pytestmark = pytest.mark.system

VOLUMES, SNAPSHOTS, REPEAT = 30, 5, 2
MiB = 1024 * 1024


def _driver_pids(workdir: Path) -> list[int]:
    """Processes whose command line names a pool under `workdir` (a driver of the run)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and any(arg.startswith(os.fsencode(workdir)) for arg in argv):
            found.append(int(entry.name))
    return found


def assert_scale(scale: dict[str, Any]) -> None:
    assert (scale["volumes"], scale["snapshots"]) == (VOLUMES, SNAPSHOTS)
    assert scale["create_s"] > 0
    creates = {op["name"]: op for op in scale["creates"]}
    assert set(creates) == {"CreateVolume", "CreateSnapshot"}
    for op in creates.values():
        assert_op(op)
    assert creates["CreateVolume"]["ok"] == VOLUMES
    assert creates["CreateSnapshot"]["ok"] == SNAPSHOTS
    listings = {listing["name"]: listing for listing in scale["listings"]}
    assert set(listings) == {"ListVolumes", "ListSnapshots"}
    for name, count in (("ListVolumes", VOLUMES), ("ListSnapshots", SNAPSHOTS)):
        listing = listings[name]
        # Every listing found everything the run made, in at least one page.
        assert listing["entries"] == count, listing
        assert 1 <= listing["pages"] <= count
        assert listing["errors"] == {}
        lat = listing["latency_ms"]
        assert lat is not None
        assert lat["count"] >= REPEAT  # at least one per run
        assert_latency(lat, lat["count"])
        assert lat["min"] <= listing["median_ms"] <= lat["max"]
    rss = scale["rss_bytes"]
    assert set(rss) == {"after_create", "after_listings", "peak_before_restart", "after_restart"}
    for value in rss.values():
        # A Python process with grpclib loaded: more than 10 MiB, far less than a GiB.
        assert 10 * MiB < value < 1024 * MiB, rss
    assert rss["peak_before_restart"] >= rss["after_listings"]
    restart = scale["restart"]
    assert len(restart["stop_s"]) == len(restart["to_ready_s"]) == REPEAT
    assert all(v > 0 for v in restart["stop_s"] + restart["to_ready_s"])
    assert min(restart["to_ready_s"]) <= restart["to_ready_median_s"]
    assert restart["to_ready_median_s"] <= max(restart["to_ready_s"])


def test_scale(cleanup: Path) -> None:
    result, report = run_bench(
        cleanup,
        "scale",
        "--spawn",
        "--volumes",
        str(VOLUMES),
        "--snapshots",
        str(SNAPSHOTS),
        "--repeat",
        str(REPEAT),
        "--idle-probes",
        "50",
        "--probe-rate",
        "100",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert report["scenario"] == "scale"
    assert report["error_count"] == 0, report["errors"]
    assert report["leftovers"] == []
    assert report["interrupted"] is None
    assert report["points"] == []
    params = report["parameters"]
    assert (params["volumes"], params["snapshots"]) == (VOLUMES, SNAPSHOTS)
    assert params["size_bytes"] == 4 * MiB  # scale's default: the smallest ext4
    assert_scale(report["scale"])
    churn = report["churn"]
    assert churn["idle"]["calls"] == 50
    assert churn["under_load"]["calls"] >= 1
    for op in (churn["idle"], churn["under_load"]):
        assert_op(op)
        assert op["errors"] == {}
    for text in ("ListVolumes", "ListSnapshots", "Restart", "Driver memory", "under load"):
        assert text in result.stdout
    assert_nothing_left(cleanup)
    assert _driver_pids(cleanup) == []


def test_scale_interrupted_leaves_nothing(cleanup: Path) -> None:
    """SIGINT while the volumes are being made: the driver stops, the pool goes."""
    returncode, out, err = interrupted_run(
        cleanup, "scale", "--spawn", "--volumes", "100000", "--concurrency", "4", images=5
    )
    assert returncode == 130, out + err
    assert "INTERRUPTED" in out
    assert_nothing_left(cleanup)
    assert _driver_pids(cleanup) == []


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["scale", "--endpoint", "/tmp/x.sock"], "scale needs --spawn"),
        (["scale", "--spawn", "--volumes", "0"], "--volumes >= 1"),
        (["lifecycle", "--spawn", "--volumes", "3"], "apply to scale"),
    ],
)
def test_scale_bad_command_line_exits_2(args: list[str], reason: str) -> None:
    result = subprocess.run(
        [*aiocsi_argv(), "bench", *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert reason in result.stderr
