"""`aiocsi bench` as a real process against a spawned (or running) driver.

Every run is short (a few small volumes) and its JSON report is checked for consistency:
counts add up, latencies are present and ordered, errors are counted by code. After each
run nothing of it may be left: no loop device backed by a file under the work directory,
no mount under it, no run directory.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from aiocsi._proto.csi import v1 as csi

from .conftest import Csi, MiB
from .process import aiocsi_argv, serve_process

pytestmark = pytest.mark.system

Report = dict[str, Any]
RUN_TIMEOUT_S = 120
SMALL = ["--size", "16Mi"]


def bench_argv(workdir: Path, *args: str, timeout: float = 90) -> list[str]:
    return [
        *aiocsi_argv(),
        "bench",
        *args,
        "--workdir",
        str(workdir),
        "--json",
        str(workdir / "report.json"),
        "--timeout",
        str(timeout),
    ]


def run_bench(workdir: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Report]:
    result = subprocess.run(
        bench_argv(workdir, *args),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    report_path = workdir / "report.json"
    assert report_path.exists(), result.stdout + result.stderr
    return result, json.loads(report_path.read_text())


def assert_nothing_left(workdir: Path) -> None:
    loops = []
    for entry in Path("/sys/block").glob("loop*"):
        try:
            backing = (entry / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if backing.startswith(f"{workdir}/"):
            loops.append(f"{entry.name} -> {backing}")
    mounts = [
        line.split(" ")[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split(" ")[4].startswith(f"{workdir}/")
    ]
    assert not loops, loops
    assert not mounts, mounts
    assert not list(workdir.glob("aiocsi-bench-*")), "the run directory was not removed"


async def list_volumes(socket_path: Path) -> list[str]:
    client = Csi.connect(socket_path)
    try:
        reply = await client.controller.list_volumes(csi.ListVolumesRequest())
    finally:
        client.channel.close()
    return [entry.volume.volume_id for entry in reply.entries if entry.volume is not None]


def assert_latency(lat: dict[str, float] | None, count: int) -> None:
    if count == 0:
        assert lat is None
        return
    assert lat is not None
    assert lat["count"] == count
    assert 0 <= lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]


def assert_op(op: dict[str, Any]) -> None:
    assert op["calls"] == op["ok"] + sum(op["errors"].values())
    assert all(n > 0 for n in op["errors"].values())
    assert_latency(op["latency_ms"], op["ok"])


def assert_run(run: dict[str, Any]) -> None:
    assert run["attempted"] == run["succeeded"] + run["failed"] > 0
    assert sum(run["errors"].values()) == run["failed"]
    assert_latency(run["latency_ms"], run["succeeded"])
    assert run["elapsed_s"] > 0
    assert run["throughput_per_s"] == pytest.approx(run["succeeded"] / run["elapsed_s"], rel=1e-3)
    ops = run["operations"]
    for op in ops + run["cleanup"]:
        assert_op(op)
    # Every unit starts with the first step; a step runs exactly when the one before it
    # succeeded; a unit succeeds exactly when its last step does.
    assert ops[0]["calls"] == run["attempted"]
    for before, after in itertools.pairwise(ops):
        assert after["calls"] == before["ok"], (before, after)
    assert ops[-1]["ok"] == run["succeeded"]


def assert_consistent(report: Report) -> None:
    """The report's figures agree with each other and nothing was left behind."""
    assert report["points"]
    all_errors: dict[str, int] = {}
    for point in report["points"]:
        for series in (point["main"], point["raw"]):
            if series is None:
                continue
            assert series["runs"]
            for run in series["runs"]:
                assert run["concurrency"] == point["concurrency"]
                assert_run(run)
                for op in run["operations"] + run["cleanup"]:
                    for code, n in op["errors"].items():
                        all_errors[code] = all_errors.get(code, 0) + n
            medians = statistics.median(r["throughput_per_s"] for r in series["runs"])
            assert series["throughput_median"] == pytest.approx(medians, abs=1e-3)
            assert_latency(series["latency_ms"], sum(r["succeeded"] for r in series["runs"]))
    if report["churn"]:
        for op in (report["churn"]["idle"], report["churn"]["under_load"]):
            assert_op(op)
            for code, n in op["errors"].items():
                all_errors[code] = all_errors.get(code, 0) + n
    assert report["errors"] == dict(sorted(all_errors.items()))
    assert report["error_count"] == sum(all_errors.values())
    assert report["leftovers"] == []
    assert report["interrupted"] is None
    assert report["machine"]["nproc"] >= 1
    assert report["aiocsi_version"]


def runs_of(report: Report) -> list[dict[str, Any]]:
    return [
        run
        for point in report["points"]
        for series in (point["main"], point["raw"])
        if series is not None
        for run in series["runs"]
    ]


def assert_all_succeeded(result: subprocess.CompletedProcess[str], report: Report) -> None:
    """No call failed, every unit succeeded, and the bench says so with exit 0: a run in
    which the driver refused every call must not pass."""
    output = result.stdout + result.stderr
    assert report["error_count"] == 0, (report["errors"], output)
    assert report["failed_units"] == 0
    for run in runs_of(report):
        assert run["succeeded"] == run["attempted"] > 0, run
    assert result.returncode == 0, output


# A release may meet the driver still busy with the interrupted call: it retries these.
RELEASE_RETRIED = {"ABORTED", "UNAVAILABLE", "DEADLINE_EXCEEDED"}


def assert_cut_short(report: Report, concurrency: int) -> Any:
    """A run stopped on purpose: the units in flight were cancelled, nothing else failed,
    and the release afterwards met nothing worse than a busy driver it retried."""
    (run,) = report["points"][0]["main"]["runs"]
    assert set(run["errors"]) <= {"CANCELLED"}, run["errors"]
    assert run["failed"] == run["errors"].get("CANCELLED", 0) <= concurrency, run
    for op in run["cleanup"]:
        assert set(op["errors"]) <= RELEASE_RETRIED, op
    assert run["attempted"] == run["succeeded"] + run["failed"]
    return run


def test_probe(cleanup: Path) -> None:
    result, report = run_bench(cleanup, "probe", "--spawn", "--count", "300", "--concurrency", "4")
    assert_consistent(report)
    assert_all_succeeded(result, report)
    (point,) = report["points"]
    (run,) = point["main"]["runs"]
    assert run["attempted"] == 300
    assert [op["name"] for op in run["operations"]] == ["Probe"]
    assert "Probe" in result.stdout
    assert_nothing_left(cleanup)


def test_probe_compare_bare(cleanup: Path) -> None:
    """Both servers answer every call, runs alternate, and the ratio is of the medians."""
    result, report = run_bench(
        cleanup, "probe", "--spawn", "--compare-bare", "--count", "200", "--repeat", "2"
    )
    assert_consistent(report)
    assert_all_succeeded(result, report)
    assert report["parameters"]["compare_bare"] is True
    (point,) = report["points"]
    assert point["concurrency"] == 16  # the default where the per-call cost is judged
    main, bare = point["main"], point["raw"]
    assert (main["kind"], bare["kind"]) == ("probe", "bare")
    for series in (main, bare):
        assert len(series["runs"]) == 2
        for run in series["runs"]:
            assert run["attempted"] == run["succeeded"] == 200
            assert [(op["name"], op["ok"]) for op in run["operations"]] == [("Probe", 200)]
        assert series["throughput_median"] > 0
    ratio = main["throughput_median"] / bare["throughput_median"]
    assert point["main_to_raw"] == pytest.approx(ratio, abs=0.01)
    assert "vs bare" in result.stdout
    assert "bare" in result.stdout
    # The bare server stopped with the run: its socket is gone with the run directory.
    assert_nothing_left(cleanup)


def test_lifecycle_mount_with_raw_ceiling(cleanup: Path) -> None:
    result, report = run_bench(
        cleanup,
        "lifecycle",
        "--spawn",
        "--count",
        "4",
        "--concurrency",
        "2",
        "--size",
        "32Mi",
        "--write",
        "1Mi",
        "--compare-raw",
    )
    assert_consistent(report)
    assert_all_succeeded(result, report)
    (point,) = report["points"]
    steps = [op["name"] for op in point["main"]["operations"]]
    assert steps == [
        "CreateVolume",
        "NodeStageVolume",
        "NodePublishVolume",
        "Write",
        "NodeUnpublishVolume",
        "NodeUnstageVolume",
        "DeleteVolume",
    ]
    assert "Mkfs" in [op["name"] for op in point["raw"]["operations"]]
    assert point["main_to_raw"] == pytest.approx(
        point["main"]["throughput_median"] / point["raw"]["throughput_median"], abs=1e-3
    )
    assert report["parameters"]["size_bytes"] == 32 * MiB
    assert_nothing_left(cleanup)


def test_lifecycle_block(cleanup: Path) -> None:
    result, report = run_bench(
        cleanup,
        "lifecycle",
        "--spawn",
        "--access",
        "block",
        "--count",
        "4",
        "--concurrency",
        "4",
        "--write",
        "1Mi",
        *SMALL,
    )
    assert_consistent(report)
    assert_all_succeeded(result, report)
    assert report["parameters"]["access"] == "block"
    assert_nothing_left(cleanup)


def test_churn_measures_probe_idle_and_under_load(cleanup: Path) -> None:
    result, report = run_bench(
        cleanup,
        "churn",
        "--spawn",
        "--count",
        "6",
        "--concurrency",
        "3",
        "--idle-probes",
        "30",
        "--probe-rate",
        "100",
        *SMALL,
    )
    assert_consistent(report)
    assert_all_succeeded(result, report)
    churn = report["churn"]
    assert churn["idle"]["calls"] == 30
    assert churn["under_load"]["calls"] >= 1
    idle, loaded = churn["idle"]["latency_ms"], churn["under_load"]["latency_ms"]
    assert idle is not None
    assert loaded is not None
    assert churn["p99_ratio"] == pytest.approx(loaded["p99"] / idle["p99"], abs=1e-3)
    assert_nothing_left(cleanup)


def test_sweep_repeats_each_concurrency(cleanup: Path) -> None:
    plot = importlib.util.find_spec("matplotlib") is not None
    extra = ["--plot", str(cleanup / "sweep.png")] if plot else []
    result, report = run_bench(
        cleanup,
        "sweep",
        "--spawn",
        "--concurrencies",
        "1,3",
        "--count",
        "3",
        "--repeat",
        "2",
        *SMALL,
        *extra,
    )
    assert_consistent(report)
    assert_all_succeeded(result, report)
    assert [p["concurrency"] for p in report["points"]] == [1, 3]
    assert all(len(p["main"]["runs"]) == 2 for p in report["points"])
    if plot:
        assert (cleanup / "sweep.png").read_bytes().startswith(b"\x89PNG")
    assert_nothing_left(cleanup)


@pytest.mark.parametrize("access", ["mount", "block"])
def test_raw(cleanup: Path, access: str) -> None:
    result, report = run_bench(
        cleanup,
        "raw",
        "--access",
        access,
        "--count",
        "4",
        "--concurrency",
        "2",
        "--write",
        "64Ki",
        *SMALL,
    )
    assert_consistent(report)
    assert_all_succeeded(result, report)
    steps = [op["name"] for op in report["points"][0]["main"]["operations"]]
    assert ("Mkfs" in steps) == (access == "mount")
    assert_nothing_left(cleanup)


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--fs-type", "vfat"], "INVALID_ARGUMENT"),
        (["--size", "1Mi", "--exact-size"], "OUT_OF_RANGE"),  # below ext4's minimum
    ],
)
def test_refusals_are_counted_by_code(cleanup: Path, args: list[str], code: str) -> None:
    result, report = run_bench(
        cleanup, "lifecycle", "--spawn", "--count", "3", "--concurrency", "2", *args
    )
    assert_consistent(report)
    assert result.returncode == 1
    (run,) = report["points"][0]["main"]["runs"]
    assert run["failed"] == run["attempted"] == 3
    assert run["errors"] == {code: 3}
    assert report["errors"] == {code: 3}
    assert code in result.stdout
    assert_nothing_left(cleanup)


def interrupted_run(workdir: Path, *args: str, images: int = 1) -> tuple[int, str, str]:
    """Run the bench until its spawned driver's pool holds `images` images, then SIGINT it;
    its exit code, stdout and stderr."""
    proc = subprocess.Popen(
        bench_argv(workdir, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while len(list(workdir.glob("aiocsi-bench-*/drv/pool/**/*.img"))) < images:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no volume appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


def test_interrupt_deletes_every_volume(cleanup: Path) -> None:
    """SIGINT mid-run: the bench deletes what it holds, reports a partial run, exits 130."""
    returncode, out, err = interrupted_run(
        cleanup, "lifecycle", "--spawn", "--duration", "30", "--concurrency", "4", *SMALL
    )
    assert returncode == 130, out + err
    report = json.loads((cleanup / "report.json").read_text())
    assert report["interrupted"] == "signal"
    assert report["leftovers"] == []
    assert_cut_short(report, concurrency=4)
    assert "INTERRUPTED" in out
    assert_nothing_left(cleanup)


def test_timeout_stops_the_run_and_cleans_up(cleanup: Path) -> None:
    result = subprocess.run(
        bench_argv(
            cleanup,
            "lifecycle",
            "--spawn",
            "--duration",
            "60",
            "--concurrency",
            "4",
            *SMALL,
            timeout=2,
        ),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads((cleanup / "report.json").read_text())
    assert report["interrupted"] == "timeout"
    assert report["leftovers"] == []
    run = assert_cut_short(report, concurrency=4)
    assert run["succeeded"] > 0
    assert run["elapsed_s"] < 10
    assert_nothing_left(cleanup)


async def test_endpoint_of_a_running_driver(cleanup: Path) -> None:
    async with serve_process(cleanup, "--allowed-path-root", str(cleanup)) as server:
        result, report = await asyncio.to_thread(
            run_bench,
            cleanup,
            "lifecycle",
            "--endpoint",
            str(server.socket_path),
            "--count",
            "3",
            "--concurrency",
            "3",
            *SMALL,
        )
        assert_consistent(report)
        assert_all_succeeded(result, report)
        assert report["parameters"]["endpoint"] == str(server.socket_path)
        # While the driver still runs: the bench released every volume it made there.
        assert_nothing_left(cleanup)
        listed = await list_volumes(server.socket_path)
        assert listed == []


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["lifecycle"], "needs --endpoint SOCKET or --spawn"),
        (["raw", "--spawn"], "raw runs without a driver"),
        (["lifecycle", "--spawn", "--write", "2Mi", "--size", "1Mi"], "exceeds --size"),
        (["probe", "--endpoint", "/tmp/x.sock", "--driver-arg=--max-operations=1"], "need --spawn"),
        (["lifecycle", "--spawn", "--compare-bare"], "--compare-bare applies to probe"),
    ],
)
def test_bad_command_line_exits_2(args: list[str], reason: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aiocsi", "bench", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert reason in result.stderr
    assert len(result.stderr.splitlines()) == 1
