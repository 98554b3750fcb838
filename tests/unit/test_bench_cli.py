"""`aiocsi bench` command line -> BenchConfig, exit codes, and the rendered tables."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from aiocsi.bench import render
from aiocsi.bench.cli import exit_code
from aiocsi.bench.config import Access, BenchConfig, Scenario, config_from_args
from aiocsi.bench.report import Report
from aiocsi.bench.stats import ChurnProbe, PointRecorder, RunRecorder, Samples
from aiocsi.cli import build_parser
from aiocsi.config import ConfigError


def bench_config(*args: str) -> BenchConfig:
    return config_from_args(build_parser().parse_args(["bench", *args]))


def test_defaults_per_scenario() -> None:
    sweep = bench_config("sweep", "--spawn")
    assert sweep.concurrencies == (1, 2, 4, 8, 16, 32)
    assert sweep.count == 50
    assert sweep.volume.access is Access.MOUNT
    assert sweep.volume.size == 64 * 1024 * 1024
    assert bench_config("probe", "--spawn").count == 5000
    assert bench_config("churn", "--spawn").concurrencies == (16,)
    assert bench_config("lifecycle", "--spawn", "--duration", "5").count is None
    assert bench_config("raw").endpoint is None


def test_endpoint_and_driver_args() -> None:
    config = bench_config("lifecycle", "--endpoint", "unix:///run/csi.sock")
    assert config.endpoint == Path("/run/csi.sock")
    assert not config.spawn
    spawned = bench_config(
        "lifecycle", "--spawn", "--driver-arg=--max-operations 1", "--driver-arg=--max-mkfs=2"
    )
    assert spawned.driver_args == ("--max-operations", "1", "--max-mkfs=2")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["raw", "--endpoint", "/x.sock"], "raw runs without a driver"),
        (["probe", "--spawn", "--compare-raw"], "--compare-raw applies"),
        (["lifecycle", "--spawn", "--plot", "x.png"], "--plot applies to sweep"),
        (["sweep", "--spawn", "--concurrencies", "1,x"], "--concurrencies"),
        (["lifecycle", "--spawn", "--concurrency", "0"], "concurrency must be > 0"),
        (["lifecycle", "--spawn", "--size", "lots"], "--size"),
        (["lifecycle", "--spawn", "--timeout", "-1"], "--timeout must be > 0"),
        (["lifecycle", "--spawn", "--name-prefix", "x" * 65], "--name-prefix"),
    ],
)
def test_bad_values_raise_one_line(args: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("-", r"\-")):
        bench_config(*args)


def test_parameters_record_the_run() -> None:
    params = bench_config("sweep", "--spawn", "--access", "block", "--compare-raw").parameters()
    assert params["scenario"] == Scenario.SWEEP.value
    assert params["access"] == "block"
    assert params["fs_type"] is None
    assert params["compare_raw"] is True


def _report(
    *, failures: int = 0, interrupted: str | None = None, leftovers: tuple[str, ...] = ()
) -> Report:
    rec = RunRecorder("driver", "lifecycles", 2, ("CreateVolume", "DeleteVolume"))
    rec.start()
    for _ in range(3):
        rec.units.ok(0.2)
        rec.op("CreateVolume").ok(0.1)
        rec.op("DeleteVolume").ok(0.1)
    for _ in range(failures):
        rec.units.failed("OUT_OF_RANGE")
        rec.op("CreateVolume").failed("OUT_OF_RANGE")
    rec.stop()
    idle = Samples("Probe")
    idle.ok(0.001)
    return Report.build(
        scenario="churn",
        version="0.1.0",
        started_at="t",
        wall_s=2.0,
        parameters={},
        machine={"nproc": 2, "memory_bytes": 2 * 1024**3, "kernel": "6.1"},
        points=[PointRecorder(2, main=[rec]).result()],
        churn=ChurnProbe.of(100, idle, idle),
        loop_lag=[0.001],
        interrupted=interrupted,
        leftovers=leftovers,
    )


def test_exit_codes() -> None:
    assert exit_code(_report()) == 0
    assert exit_code(_report(failures=1)) == 1
    assert exit_code(_report(interrupted="timeout")) == 1
    assert exit_code(_report(interrupted="signal")) == 130
    assert exit_code(_report(interrupted="signal", leftovers=("volume v",))) == 4


def test_plain_text_tables_without_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render, "HAVE_RICH", False)
    out = io.StringIO()
    render.render(_report(failures=2), out)
    text = out.getvalue()
    assert "aiocsi bench churn (aiocsi 0.1.0) on 2 CPUs, 2.0 GiB, kernel 6.1" in text
    assert "Throughput" in text
    assert "CreateVolume" in text
    assert "OUT_OF_RANGE 2" in text
    assert "Probe at 100/s" in text
    assert "2 failed calls, 2 failed units" in text


def test_rich_tables_hold_the_same_figures() -> None:
    if not render.HAVE_RICH:
        pytest.skip("rich is not installed (the `bench` extra)")
    out = io.StringIO()
    render.render(_report(), out)
    assert "CreateVolume" in out.getvalue()
    assert "no errors" in out.getvalue()
