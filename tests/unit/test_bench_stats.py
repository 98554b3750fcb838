"""The bench's statistics: nearest-rank percentiles, step counts, medians, the report."""

from __future__ import annotations

import json
import time

import pytest

from aiocsi.bench.report import Report, ScaleRecorder
from aiocsi.bench.stats import (
    ChurnProbe,
    Latency,
    PointRecorder,
    RunRecorder,
    Samples,
    Series,
    percentile,
)


def test_percentiles_of_one_to_hundred_are_the_ranks() -> None:
    data = [float(v) for v in range(1, 101)]
    assert [percentile(data, q) for q in (1, 50, 90, 99, 100)] == [1, 50, 90, 99, 100]


def test_percentile_uses_exact_ranks() -> None:
    # 0.9 * 10 is 9.000000000000002 in floats: a float rank would pick the 10th value.
    data = [float(v) for v in range(10, 101, 10)]
    assert percentile(data, 90) == 90
    assert percentile(data, 99) == 100
    assert percentile(data, 50) == 50
    assert percentile(data, 99.9) == 100


def test_percentile_of_few_samples_is_an_observed_value() -> None:
    assert percentile([7.0], 50) == percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0], 50) == 1.0
    assert percentile([1.0, 2.0], 51) == 2.0


@pytest.mark.parametrize("q", [0, -1, 100.5])
def test_percentile_refuses_out_of_range(q: float) -> None:
    with pytest.raises(ValueError, match="percentile"):
        percentile([1.0], q)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)


def test_latency_is_in_ms_ordered_and_independent_of_input_order() -> None:
    seconds = [v / 1000 for v in range(1, 1001)]
    shuffled = seconds[500:] + seconds[:500][::-1]
    lat = Latency.of(shuffled)
    assert lat == Latency.of(seconds)
    assert lat is not None
    assert (lat.count, lat.min, lat.p50, lat.p90, lat.p99, lat.max) == (
        1000,
        1.0,
        500.0,
        900.0,
        990.0,
        1000.0,
    )
    assert lat.mean == pytest.approx(500.5)


def test_latency_of_nothing_is_none() -> None:
    assert Latency.of([]) is None


def test_samples_count_ok_and_errors_separately() -> None:
    samples = Samples("CreateVolume")
    for seconds in (0.01, 0.02, 0.03):
        samples.ok(seconds)
    samples.failed("ABORTED")
    samples.failed("ABORTED")
    samples.failed("INTERNAL")
    stats = samples.stats()
    assert (stats.calls, stats.ok) == (6, 3)
    assert stats.errors == {"ABORTED": 2, "INTERNAL": 1}
    assert stats.latency_ms is not None
    assert stats.latency_ms.count == 3
    assert stats.latency_ms.p50 == 20.0


def _run(concurrency: int, unit_seconds: list[float], failures: int = 0) -> RunRecorder:
    rec = RunRecorder("driver", "lifecycles", concurrency, ("CreateVolume", "DeleteVolume"))
    for seconds in unit_seconds:
        rec.units.ok(seconds)
        rec.op("CreateVolume").ok(seconds / 2)
        rec.op("DeleteVolume").ok(seconds / 2)
    for _ in range(failures):
        rec.units.failed("INVALID_ARGUMENT")
        rec.op("CreateVolume").failed("INVALID_ARGUMENT")
    rec.start()
    rec._started = time.perf_counter() - 0.5  # as if the run took half a second
    rec.stop()
    return rec


def test_run_result_adds_up() -> None:
    rec = _run(2, [0.1, 0.2, 0.3], failures=2)
    result = rec.result()
    assert (result.attempted, result.succeeded, result.failed) == (5, 3, 2)
    assert result.errors == {"INVALID_ARGUMENT": 2}
    assert [op.name for op in result.operations] == ["CreateVolume", "DeleteVolume"]
    assert [op.calls for op in result.operations] == [5, 3]
    assert result.elapsed_s == pytest.approx(0.5, abs=0.05)
    assert result.throughput_per_s == pytest.approx(3 / result.elapsed_s, rel=1e-3)


def test_cleanup_steps_are_reported_in_step_order() -> None:
    rec = RunRecorder("driver", "lifecycles", 1, ("CreateVolume", "NodeStage", "DeleteVolume"))
    rec.cleanup_op("DeleteVolume").ok(0.01)
    rec.cleanup_op("NodeStage").ok(0.01)
    assert [op.name for op in rec.result().cleanup] == ["NodeStage", "DeleteVolume"]


def test_series_takes_the_median_and_pools_latencies() -> None:
    runs = [_run(4, [0.1] * n) for n in (1, 2, 3)]
    series = Series.of(runs)
    assert series is not None
    rates = sorted(r.result().throughput_per_s for r in runs)
    assert series.throughput_median == pytest.approx(rates[1], abs=1e-3)
    assert series.latency_ms is not None
    assert series.latency_ms.count == 6
    assert [op.calls for op in series.operations] == [6, 6]
    assert Series.of([]) is None


def test_point_ratio_is_driver_over_raw() -> None:
    point = PointRecorder(4, main=[_run(4, [0.1])], raw=[_run(4, [0.1] * 2)]).result()
    assert point.main is not None
    assert point.raw is not None
    assert point.main_to_raw == pytest.approx(
        point.main.throughput_median / point.raw.throughput_median, abs=1e-3
    )
    assert PointRecorder(4, main=[_run(4, [0.1])]).result().main_to_raw is None


def test_churn_ratio_compares_p99s() -> None:
    idle, loaded = Samples("Probe"), Samples("Probe")
    for _ in range(100):
        idle.ok(0.002)
        loaded.ok(0.005)
    assert ChurnProbe.of(50, idle, loaded).p99_ratio == 2.5
    assert ChurnProbe.of(50, Samples("Probe"), loaded).p99_ratio is None


def _report(**overrides: object) -> Report:
    arguments: dict[str, object] = {
        "scenario": "lifecycle",
        "version": "0",
        "started_at": "t",
        "wall_s": 1.0,
        "parameters": {},
        "machine": {},
        "points": [],
        "churn": None,
        "loop_lag": [],
        "interrupted": None,
        "leftovers": [],
    }
    arguments.update(overrides)
    return Report.build(**arguments)  # type: ignore[arg-type]


def test_report_totals_every_error_and_serialises() -> None:
    failing = _run(2, [0.1], failures=2)
    failing.cleanup_op("DeleteVolume").failed("ABORTED")
    idle, loaded = Samples("Probe"), Samples("Probe")
    idle.ok(0.001)
    loaded.failed("DEADLINE_EXCEEDED")
    report = _report(
        points=[PointRecorder(2, main=[failing]).result()], churn=ChurnProbe.of(10, idle, loaded)
    )
    assert report.errors == {"ABORTED": 1, "DEADLINE_EXCEEDED": 1, "INVALID_ARGUMENT": 2}
    assert report.error_count == 4
    assert report.failed_units == 2
    assert not report.clean
    decoded = json.loads(report.to_json())
    assert decoded["points"][0]["main"]["runs"][0]["failed"] == 2


def test_a_report_without_errors_is_clean_unless_interrupted_or_leaky() -> None:
    points = [PointRecorder(1, main=[_run(1, [0.1])]).result()]
    assert _report(points=points).clean
    assert not _report(points=points, interrupted="timeout").clean
    assert not _report(points=points, leftovers=["volume x"]).clean


def test_scale_takes_medians_and_counts_every_error() -> None:
    rec = ScaleRecorder(volumes=3, snapshots=1)
    rec.create_op("CreateVolume").ok(0.01)
    rec.create_op("CreateVolume").failed("RESOURCE_EXHAUSTED")
    for seconds in (0.3, 0.1, 0.2):
        rec.listing_op("ListVolumes").ok(seconds)
    rec.listing_op("ListVolumes").failed("ABORTED")
    rec.listed("ListVolumes", entries=3, pages=2)
    rec.stop_s.extend([0.02, 0.01])
    rec.to_ready_s.extend([0.9, 0.5, 0.7])
    rec.rss["after_create"] = 50 * 1024 * 1024
    scale = rec.result()
    (listing,) = scale.listings
    assert (listing.entries, listing.pages, listing.median_ms) == (3, 2, 200.0)
    assert listing.errors == {"ABORTED": 1}
    assert scale.restart.to_ready_median_s == 0.7
    assert scale.restart.stop_median_s == pytest.approx(0.015)
    report = _report(scenario="scale", scale=scale)
    assert report.errors == {"ABORTED": 1, "RESOURCE_EXHAUSTED": 1}
    assert not report.clean
    decoded = json.loads(report.to_json())
    assert decoded["scale"]["rss_bytes"] == {"after_create": 50 * 1024 * 1024}
    assert decoded["scale"]["listings"][0]["latency_ms"]["count"] == 3


def test_a_scale_run_that_never_listed_reports_no_median() -> None:
    scale = ScaleRecorder(volumes=1, snapshots=0).result()
    assert scale.listings == []
    assert scale.restart.to_ready_median_s is None
