"""Prometheus metrics: the observers the runtime calls, and a collector of its statistics.

Two kinds of numbers. Events (a call finished, a command ran, the loop woke late, a commit
landed) are observed as they happen, each costing one histogram observation. State
(operations in flight, pool bytes, volumes by state, ...) is not tracked at all: a scrape
takes a `Runtime` snapshot of the statistics the runtime already keeps and the collector
renders that, so an idle metrics endpoint costs the driver nothing.

Names follow DESIGN.md §8b: `csi_plugin_operations_seconds` as kubernetes-csi defines it,
the rest with the `aiocsi_` prefix and a unit suffix. docs/metrics are in the README.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# kubernetes-csi csi-lib-utils' buckets, so the sidecars' dashboards work on the driver.
OPERATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 25, 50, 120, 300, 600)
COMMAND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60)
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# grpc-go spells two codes differently from their protobuf names.
_GO_CODE_NAMES = {"OK": "OK", "CANCELLED": "Canceled"}


def go_code_name(status_name: str) -> str:
    """`NOT_FOUND` -> `NotFound`: the status code as grpc-go's `codes.Code.String()`."""
    known = _GO_CODE_NAMES.get(status_name)
    return known or "".join(part.capitalize() for part in status_name.split("_"))


@dataclass(frozen=True)
class OperationCounts:
    running: int
    # None: the runtime does not count it (not exported rather than shown as 0).
    queued: int | None = None
    joined: int | None = None
    refused: int | None = None


@dataclass(frozen=True)
class WorkerCounts:
    limit: int
    threads: int
    busy: int
    queued: int


@dataclass(frozen=True)
class StoreCounts:
    commits: int
    jobs: int
    failed_jobs: int
    queued: int


@dataclass(frozen=True)
class PoolCensus:
    """What the pool holds, counted off the event loop."""

    total_bytes: int
    free_bytes: int
    provisioned_bytes: int
    allocated_bytes: int
    loop_devices: int
    foreign_bytes: int = 0
    offered_bytes: int = 0
    space_low: bool = False
    volumes: Mapping[str, int] = field(default_factory=dict)
    snapshots: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Runtime:
    """One scrape's view of the driver's statistics."""

    calls_in_flight: int
    calls_refused_draining: int
    operations: OperationCounts
    pool: PoolCensus
    workers: WorkerCounts | None = None
    store: StoreCounts | None = None
    repairs: Mapping[str, int] = field(default_factory=dict)
    log_lines_dropped: int | None = None


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    # prometheus_client appends `_total` to a counter family's samples itself.
    return CounterMetricFamily(name.removesuffix("_total"), text, value=value)


def _by_label(family: GaugeMetricFamily | CounterMetricFamily, values: Mapping[str, int]) -> Metric:
    for label, value in sorted(values.items()):
        family.add_metric([label], value)
    return family


def _optional(
    make: type[GaugeMetricFamily | CounterMetricFamily], name: str, text: str, value: int | None
) -> Iterator[Metric]:
    if value is not None:
        yield (_gauge if make is GaugeMetricFamily else _counter)(name, text, value)


def runtime_metrics(rt: Runtime) -> Iterator[Metric]:
    """Every state metric of one snapshot."""
    yield _gauge("aiocsi_calls_in_flight", "gRPC calls being answered.", rt.calls_in_flight)
    yield _counter(
        "aiocsi_calls_refused_draining_total",
        "Calls answered UNAVAILABLE because the driver was shutting down.",
        rt.calls_refused_draining,
    )
    ops = rt.operations
    yield _gauge(
        "aiocsi_operations_in_flight", "Volume operations started and not finished.", ops.running
    )
    yield from _optional(
        GaugeMetricFamily,
        "aiocsi_operations_queued",
        "Operations waiting for a --max-operations slot.",
        ops.queued,
    )
    yield from _optional(
        CounterMetricFamily,
        "aiocsi_operation_retries_joined_total",
        "Identical retries that joined the operation already running.",
        ops.joined,
    )
    yield from _optional(
        CounterMetricFamily,
        "aiocsi_operation_retries_refused_total",
        "Different operations on a busy key, refused with ABORTED.",
        ops.refused,
    )
    if (workers := rt.workers) is not None:
        yield _gauge("aiocsi_worker_threads_limit", "Most worker threads.", workers.limit)
        yield _gauge("aiocsi_worker_threads", "Worker threads started.", workers.threads)
        yield _gauge("aiocsi_worker_threads_busy", "Worker threads running a job.", workers.busy)
        yield _gauge("aiocsi_worker_jobs_queued", "Jobs waiting for a worker.", workers.queued)
    if (store := rt.store) is not None:
        yield _counter("aiocsi_store_commits_total", "Store transactions committed.", store.commits)
        yield _counter("aiocsi_store_jobs_total", "Store jobs run.", store.jobs)
        yield _counter(
            "aiocsi_store_failed_jobs_total", "Store jobs that failed.", store.failed_jobs
        )
        yield _gauge("aiocsi_store_jobs_queued", "Store jobs waiting to run.", store.queued)
    pool = rt.pool
    yield _gauge("aiocsi_pool_total_bytes", "Size of the pool's filesystem.", pool.total_bytes)
    yield _gauge("aiocsi_pool_free_bytes", "Bytes free on the pool's filesystem.", pool.free_bytes)
    yield _gauge(
        "aiocsi_pool_provisioned_bytes",
        "Bytes promised to volume and snapshot images.",
        pool.provisioned_bytes,
    )
    yield _gauge(
        "aiocsi_pool_allocated_bytes",
        "Bytes the images take on disk (allocated blocks).",
        pool.allocated_bytes,
    )
    yield _gauge(
        "aiocsi_pool_foreign_bytes",
        "Bytes of the pool's filesystem used by anything but the images.",
        pool.foreign_bytes,
    )
    yield _gauge(
        "aiocsi_pool_offered_bytes",
        "Bytes a new sparse volume may have: GetCapacity's answer.",
        pool.offered_bytes,
    )
    yield _gauge(
        "aiocsi_pool_space_low",
        "1 while free space is below what an attached sparse volume may still allocate.",
        int(pool.space_low),
    )
    yield _gauge(
        "aiocsi_loop_devices_attached", "Loop devices backed by this pool.", pool.loop_devices
    )
    volumes = GaugeMetricFamily("aiocsi_volumes", "Volumes by state.", labels=["state"])
    yield _by_label(volumes, pool.volumes)
    snapshots = GaugeMetricFamily("aiocsi_snapshots", "Snapshots by state.", labels=["state"])
    yield _by_label(snapshots, pool.snapshots)
    repairs = CounterMetricFamily(
        "aiocsi_reconcile_repairs", "Repairs made by the start-up reconcile.", labels=["kind"]
    )
    yield _by_label(repairs, rt.repairs)
    yield from _optional(
        CounterMetricFamily,
        "aiocsi_log_lines_dropped_total",
        "Log lines dropped because stdout's reader did not keep up.",
        rt.log_lines_dropped,
    )


class _RuntimeCollector(Collector):
    """Renders whichever snapshot the scrape in progress took."""

    def __init__(self) -> None:
        self.runtime: Runtime | None = None

    def collect(self) -> Iterator[Metric]:
        if self.runtime is not None:
            yield from runtime_metrics(self.runtime)


class Metrics:
    """The driver's registry. Observers are called by the runtime; `render` by a scrape."""

    def __init__(self, driver_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._driver_name = driver_name
        self._operations = Histogram(
            "csi_plugin_operations_seconds",
            "Time the driver took to answer each CSI call.",
            ["driver_name", "method_name", "grpc_status_code"],
            buckets=OPERATION_BUCKETS,
            registry=self.registry,
        )
        self._commands = Histogram(
            "aiocsi_command_seconds",
            "Time host commands took, by command.",
            ["command"],
            buckets=COMMAND_BUCKETS,
            registry=self.registry,
        )
        self._loop_lag = Histogram(
            "aiocsi_event_loop_lag_seconds",
            "How late the event loop woke a sleeping watchdog task.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self._runtime = _RuntimeCollector()
        self.registry.register(self._runtime)
        # One labelled child per (method, code): a dict hit instead of .labels()'s lock.
        self._calls: dict[tuple[str, str], Any] = {}
        self._command_children: dict[str, Any] = {}

    def observe_call(self, method_path: str, status_name: str, seconds: float) -> None:
        child = self._calls.get((method_path, status_name))
        if child is None:
            child = self._operations.labels(
                self._driver_name, method_path, go_code_name(status_name)
            )
            self._calls[method_path, status_name] = child
        child.observe(seconds)

    def observe_command(self, command: str, seconds: float) -> None:
        child = self._command_children.get(command)
        if child is None:
            child = self._command_children[command] = self._commands.labels(command)
        child.observe(seconds)

    def observe_loop_lag(self, seconds: float) -> None:
        self._loop_lag.observe(seconds)

    def commit_observer(self) -> Callable[[float, int], None]:
        """An observer for the store's commits, registering their histograms (only a store
        that reports its commits gets them)."""
        commit = Histogram(
            "aiocsi_store_commit_seconds",
            "Time each store transaction took, fsync included.",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )
        batch = Histogram(
            "aiocsi_store_commit_batch_jobs",
            "Jobs committed together in one store transaction.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )

        def observe(seconds: float, jobs: int) -> None:
            # In the store thread: prometheus_client's metrics take their own locks.
            commit.observe(seconds)
            batch.observe(jobs)

        return observe

    def render(self, runtime: Runtime) -> bytes:
        """The text exposition of everything (blocking: call from a worker thread, one
        scrape at a time)."""
        self._runtime.runtime = runtime
        try:
            return generate_latest(self.registry)
        finally:
            self._runtime.runtime = None
