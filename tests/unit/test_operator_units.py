"""The operator side's small parts: the flag, code names, observers, call statistics."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aiocsi.cli import build_parser, config_from_args
from aiocsi.config import ConfigError, parse_http_endpoint
from aiocsi.host import process
from aiocsi.metrics import Metrics, OperationCounts, PoolCensus, Runtime, go_code_name
from aiocsi.server.tracker import CallStatistics, CallTracker
from aiocsi.threads import WorkerPool


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("", None),
        (":9808", ("", 9808)),
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:9808", ("::1", 9808)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_http_endpoint_is_host_and_port(text: str, parsed: tuple[str, int] | None) -> None:
    assert parse_http_endpoint(text) == parsed


@pytest.mark.parametrize("text", ["9808", "host:", "host:http", ":70000", "::1:9808"])
def test_bad_http_endpoints_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="http endpoint"):
        parse_http_endpoint(text)


def test_http_endpoint_is_off_by_default_and_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AIOCSI_HTTP_ENDPOINT", raising=False)
    assert config_from_args(build_parser().parse_args(["serve"])).http_endpoint is None
    monkeypatch.setenv("AIOCSI_HTTP_ENDPOINT", ":9808")
    assert config_from_args(build_parser().parse_args(["serve"])).http_endpoint == ("", 9808)
    args = build_parser().parse_args(["serve", "--http-endpoint", "127.0.0.1:1"])
    assert config_from_args(args).http_endpoint == ("127.0.0.1", 1)


@pytest.mark.parametrize(
    ("status", "go"),
    [
        ("OK", "OK"),
        ("CANCELLED", "Canceled"),
        ("NOT_FOUND", "NotFound"),
        ("INVALID_ARGUMENT", "InvalidArgument"),
        ("DEADLINE_EXCEEDED", "DeadlineExceeded"),
        ("ABORTED", "Aborted"),
        ("RESOURCE_EXHAUSTED", "ResourceExhausted"),
        ("UNAVAILABLE", "Unavailable"),
    ],
)
def test_status_codes_are_named_as_grpc_go_names_them(status: str, go: str) -> None:
    assert go_code_name(status) == go


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_observed_calls_land_in_the_kubernetes_csi_histogram() -> None:
    metrics = Metrics("drv")
    metrics.observe_call("/csi.v1.Identity/Probe", "OK", 0.02)
    metrics.observe_call("/csi.v1.Identity/Probe", "OK", 0.3)
    metrics.observe_call("/csi.v1.Node/NodeStageVolume", "NOT_FOUND", 700)
    census = PoolCensus(100, 50, 10, 5, 0, volumes={"ready": 2}, snapshots={})
    text = metrics.render(Runtime(0, 0, OperationCounts(running=0), census)).decode()
    samples = _samples(text)
    probe = (
        ("driver_name", "drv"),
        ("grpc_status_code", "OK"),
        ("method_name", "/csi.v1.Identity/Probe"),
    )
    assert samples["csi_plugin_operations_seconds_count", probe] == 2
    le_01 = tuple(sorted((*probe, ("le", "0.1"))))
    assert samples["csi_plugin_operations_seconds_bucket", le_01] == 1
    buckets = [
        float(labels["le"])
        for (name, items), _ in samples.items()
        if name == "csi_plugin_operations_seconds_bucket"
        and (labels := dict(items))["method_name"].endswith("Probe")
        and labels["le"] != "+Inf"
    ]
    assert buckets == [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 25, 50, 120, 300, 600]
    stage = (
        ("driver_name", "drv"),
        ("grpc_status_code", "NotFound"),
        ("method_name", "/csi.v1.Node/NodeStageVolume"),
    )
    assert samples["csi_plugin_operations_seconds_count", stage] == 1
    assert samples["aiocsi_volumes", (("state", "ready"),)] == 2
    # Not counted by the runtime: not exported, rather than shown as 0.
    assert not any(name.startswith("aiocsi_operations_queued") for name, _ in samples)


async def test_every_command_is_told_to_the_observer() -> None:
    seen: list[tuple[str, float]] = []
    workers = WorkerPool(2)
    process.observe_commands(lambda name, seconds: seen.append((name, seconds)))
    try:
        await process.run(workers, ["/bin/true"])
        await process.run(workers, ["false"], check=False)
    finally:
        process.observe_commands(None)
    try:
        await process.run(workers, ["true"])
    finally:
        workers.close()
    assert [name for name, _ in seen] == ["true", "false"]
    assert all(seconds > 0 for _, seconds in seen)


def test_the_call_tracker_reports_a_frozen_snapshot() -> None:
    tracker = CallTracker()
    tracker.enter()
    tracker.enter()
    tracker.leave()
    assert tracker.admit()
    tracker.draining = True
    assert not tracker.admit()
    stats = tracker.statistics()
    assert stats == CallStatistics(active=1, draining=True, refused_draining=1)
    with pytest.raises(AttributeError):
        stats.active = 5  # type: ignore[misc]


def test_the_pool_budget_figures_are_rendered() -> None:
    census = PoolCensus(
        100, 50, 40, 10, 0, foreign_bytes=40, offered_bytes=20, space_low=True, volumes={}
    )
    samples = _samples(
        Metrics("drv").render(Runtime(0, 0, OperationCounts(running=0), census)).decode()
    )
    assert samples["aiocsi_pool_free_bytes", ()] == 50
    assert samples["aiocsi_pool_provisioned_bytes", ()] == 40
    assert samples["aiocsi_pool_allocated_bytes", ()] == 10
    assert samples["aiocsi_pool_foreign_bytes", ()] == 40
    assert samples["aiocsi_pool_offered_bytes", ()] == 20
    assert samples["aiocsi_pool_space_low", ()] == 1
