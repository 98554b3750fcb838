"""Samples, percentiles and the report: every figure the table and the JSON file hold.

Latencies are kept in seconds while a run goes on and reported in milliseconds. A step's
latency figures cover its successful calls; failed calls are counted by code instead, so a
fast refusal never flatters the percentiles.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

MS_PER_S = 1000.0
PERCENTILES = (50, 90, 99)
_DIGITS = 3


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least `q`% of samples <= it.

    Always a value that was observed, and p50 <= p90 <= p99 <= max holds by construction.
    """
    if not sorted_values:
        raise ValueError("percentile of no samples")
    if not 0 < q <= 100:  # noqa: PLR2004 - percent
        raise ValueError(f"percentile must be in (0, 100], got {q}")
    # Exact arithmetic: 0.9 * 10 in floats is 9.000000000000002, whose ceiling is 10.
    rank = math.ceil(Fraction(str(q)) * len(sorted_values) / 100)
    return sorted_values[max(rank, 1) - 1]


def _ms(seconds: float) -> float:
    return round(seconds * MS_PER_S, _DIGITS)


@dataclass(frozen=True)
class Latency:
    """Milliseconds over `count` samples."""

    count: int
    min: float
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, seconds: Iterable[float]) -> Latency | None:
        ordered = sorted(seconds)
        if not ordered:
            return None
        p50, p90, p99 = (_ms(percentile(ordered, q)) for q in PERCENTILES)
        return cls(
            count=len(ordered),
            min=_ms(ordered[0]),
            mean=_ms(statistics.fmean(ordered)),
            p50=p50,
            p90=p90,
            p99=p99,
            max=_ms(ordered[-1]),
        )


@dataclass(frozen=True)
class OpStats:
    """One step (an RPC, or a host action for `raw`): calls = ok + sum(errors)."""

    name: str
    calls: int
    ok: int
    errors: dict[str, int]
    latency_ms: Latency | None


class Samples:
    """Collects one step's outcomes while a run goes on."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()

    def ok(self, seconds: float) -> None:
        self.latencies.append(seconds)

    def failed(self, code: str) -> None:
        self.errors[code] += 1

    @property
    def calls(self) -> int:
        return len(self.latencies) + self.errors.total()

    def stats(self) -> OpStats:
        return OpStats(
            name=self.name,
            calls=self.calls,
            ok=len(self.latencies),
            errors=dict(sorted(self.errors.items())),
            latency_ms=Latency.of(self.latencies),
        )

    @classmethod
    def pooled(cls, name: str, parts: Iterable[Samples]) -> Samples:
        merged = cls(name)
        for part in parts:
            merged.latencies.extend(part.latencies)
            merged.errors.update(part.errors)
        return merged


def _merge_named(groups: Iterable[dict[str, Samples]]) -> list[Samples]:
    """Pool same-named steps across runs, keeping the order in which names first appear."""
    by_name: dict[str, list[Samples]] = {}
    for group in groups:
        for name, samples in group.items():
            by_name.setdefault(name, []).append(samples)
    return [Samples.pooled(name, parts) for name, parts in by_name.items()]


@dataclass(frozen=True)
class RunResult:
    """One run: `attempted` units (lifecycles or calls) at one concurrency."""

    kind: str
    unit: str
    concurrency: int
    elapsed_s: float
    attempted: int
    succeeded: int
    failed: int
    throughput_per_s: float
    latency_ms: Latency | None
    errors: dict[str, int]
    operations: list[OpStats]
    cleanup: list[OpStats]


class RunRecorder:
    """Collects one run. `units` holds whole lifecycles (or calls); `op()` each step."""

    def __init__(self, kind: str, unit: str, concurrency: int, steps: Sequence[str]) -> None:
        self.kind = kind
        self.unit = unit
        self.concurrency = concurrency
        self.units = Samples(unit)
        self.ops: dict[str, Samples] = {name: Samples(name) for name in steps}
        self.cleanup_ops: dict[str, Samples] = {}
        self._started: float | None = None
        self._stopped: float | None = None

    def op(self, name: str) -> Samples:
        return self.ops.setdefault(name, Samples(name))

    def cleanup_op(self, name: str) -> Samples:
        return self.cleanup_ops.setdefault(name, Samples(name))

    def start(self) -> None:
        self._started = time.perf_counter()

    def stop(self) -> None:
        self._stopped = time.perf_counter()

    @property
    def elapsed(self) -> float:
        if self._started is None:
            return 0.0
        return (self._stopped or time.perf_counter()) - self._started

    def step_order(self, samples: Samples) -> int:
        names = list(self.ops)
        return names.index(samples.name) if samples.name in names else len(names)

    def result(self) -> RunResult:
        elapsed = round(self.elapsed, _DIGITS + 3)
        succeeded = len(self.units.latencies)
        return RunResult(
            kind=self.kind,
            unit=self.unit,
            concurrency=self.concurrency,
            elapsed_s=elapsed,
            attempted=self.units.calls,
            succeeded=succeeded,
            failed=self.units.errors.total(),
            throughput_per_s=round(succeeded / elapsed, _DIGITS) if elapsed > 0 else 0.0,
            latency_ms=Latency.of(self.units.latencies),
            errors=dict(sorted(self.units.errors.items())),
            operations=[s.stats() for s in self.ops.values()],
            cleanup=[s.stats() for s in sorted(self.cleanup_ops.values(), key=self.step_order)],
        )


@dataclass(frozen=True)
class Series:
    """Repeated runs of one kind at one concurrency, with their median and pooled figures."""

    kind: str
    unit: str
    runs: list[RunResult]
    throughput_median: float
    latency_ms: Latency | None
    operations: list[OpStats]
    cleanup: list[OpStats]

    @classmethod
    def of(cls, recorders: Sequence[RunRecorder]) -> Series | None:
        if not recorders:
            return None
        runs = [r.result() for r in recorders]
        return cls(
            kind=recorders[0].kind,
            unit=recorders[0].unit,
            runs=runs,
            throughput_median=round(statistics.median(r.throughput_per_s for r in runs), _DIGITS),
            latency_ms=Latency.of(s for r in recorders for s in r.units.latencies),
            operations=[s.stats() for s in _merge_named(r.ops for r in recorders)],
            cleanup=[
                s.stats()
                for s in sorted(
                    _merge_named(r.cleanup_ops for r in recorders), key=recorders[0].step_order
                )
            ],
        )


@dataclass(frozen=True)
class Point:
    """Everything measured at one concurrency; `raw` is the `--compare-raw` ceiling."""

    concurrency: int
    main: Series | None
    raw: Series | None
    main_to_raw: float | None


@dataclass
class PointRecorder:
    concurrency: int
    main: list[RunRecorder] = field(default_factory=list)
    raw: list[RunRecorder] = field(default_factory=list)

    def result(self) -> Point:
        main, raw = Series.of(self.main), Series.of(self.raw)
        ratio = None
        if main is not None and raw is not None and raw.throughput_median > 0:
            ratio = round(main.throughput_median / raw.throughput_median, _DIGITS)
        return Point(self.concurrency, main, raw, ratio)


@dataclass(frozen=True)
class ChurnProbe:
    """Probe latency at a fixed rate, idle and while lifecycles run."""

    rate_per_s: float
    idle: OpStats
    under_load: OpStats
    p99_ratio: float | None

    @classmethod
    def of(cls, rate: float, idle: Samples, loaded: Samples) -> ChurnProbe:
        idle_stats, load_stats = idle.stats(), loaded.stats()
        ratio = None
        if idle_stats.latency_ms and load_stats.latency_ms and idle_stats.latency_ms.p99 > 0:
            ratio = round(load_stats.latency_ms.p99 / idle_stats.latency_ms.p99, _DIGITS)
        return cls(rate, idle_stats, load_stats, ratio)


def _median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), _DIGITS + 3) if values else None


@dataclass(frozen=True)
class Listing:
    """Full listings of one kind, each following next_token to its end, as a client that
    sends no max_entries does: the entries and pages of the last one, and their times."""

    name: str
    entries: int
    pages: int
    latency_ms: Latency | None
    median_ms: float | None
    errors: dict[str, int]


@dataclass(frozen=True)
class Restart:
    """SIGTERM to exit (`stop_s`), and the new process's start until Probe said ready."""

    stop_s: list[float]
    to_ready_s: list[float]
    stop_median_s: float | None
    to_ready_median_s: float | None


@dataclass(frozen=True)
class Scale:
    """`scale`: what was created, listing times, memory and restart with that state."""

    volumes: int
    snapshots: int
    create_s: float
    creates: list[OpStats]
    listings: list[Listing]
    # VmRSS of the driver after the creates, after the listings, and right after a
    # restart (ready, on the same state); VmHWM of the first process before its restart.
    rss_bytes: dict[str, int | None]
    restart: Restart

    @property
    def errors(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for op in self.creates:
            total.update(op.errors)
        for listing in self.listings:
            total.update(listing.errors)
        return total


class ScaleRecorder:
    """Collects `scale` while it runs."""

    def __init__(self, volumes: int, snapshots: int) -> None:
        self.volumes = volumes
        self.snapshots = snapshots
        self.create_s = 0.0
        self.creates: dict[str, Samples] = {}
        self.listings: dict[str, Samples] = {}
        self.shape: dict[str, tuple[int, int]] = {}  # name -> (entries, pages)
        self.rss: dict[str, int | None] = {}
        self.stop_s: list[float] = []
        self.to_ready_s: list[float] = []

    def create_op(self, name: str) -> Samples:
        return self.creates.setdefault(name, Samples(name))

    def listing_op(self, name: str) -> Samples:
        return self.listings.setdefault(name, Samples(name))

    def listed(self, name: str, entries: int, pages: int) -> None:
        self.shape[name] = (entries, pages)

    def result(self) -> Scale:
        listings = []
        for name, samples in self.listings.items():
            entries, pages = self.shape.get(name, (0, 0))
            median = _median(samples.latencies)
            listings.append(
                Listing(
                    name=name,
                    entries=entries,
                    pages=pages,
                    latency_ms=Latency.of(samples.latencies),
                    median_ms=None if median is None else _ms(median),
                    errors=dict(sorted(samples.errors.items())),
                )
            )
        return Scale(
            volumes=self.volumes,
            snapshots=self.snapshots,
            create_s=round(self.create_s, _DIGITS),
            creates=[s.stats() for s in self.creates.values()],
            listings=listings,
            rss_bytes=dict(self.rss),
            restart=Restart(
                stop_s=[round(v, _DIGITS + 3) for v in self.stop_s],
                to_ready_s=[round(v, _DIGITS + 3) for v in self.to_ready_s],
                stop_median_s=_median(self.stop_s),
                to_ready_median_s=_median(self.to_ready_s),
            ),
        )


def _all_errors(
    points: Sequence[Point], churn: ChurnProbe | None, scale: Scale | None
) -> Counter[str]:
    total: Counter[str] = Counter()
    for point in points:
        for series in (point.main, point.raw):
            for run in series.runs if series else ():
                for op in [*run.operations, *run.cleanup]:
                    total.update(op.errors)
    if churn is not None:
        total.update(churn.idle.errors)
        total.update(churn.under_load.errors)
    if scale is not None:
        total.update(scale.errors)
    return total


@dataclass(frozen=True)
class Report:
    scenario: str
    aiocsi_version: str
    started_at: str
    wall_s: float
    parameters: dict[str, object]
    machine: dict[str, object]
    points: list[Point]
    churn: ChurnProbe | None
    scale: Scale | None
    client_loop_lag_ms: Latency | None
    client_cpu_s: float
    errors: dict[str, int]
    error_count: int
    failed_units: int
    interrupted: str | None
    leftovers: list[str]

    @classmethod
    def build(
        cls,
        *,
        scenario: str,
        version: str,
        started_at: str,
        wall_s: float,
        parameters: dict[str, object],
        machine: dict[str, object],
        points: Sequence[Point],
        churn: ChurnProbe | None,
        loop_lag: Sequence[float],
        scale: Scale | None = None,
        interrupted: str | None,
        leftovers: Sequence[str],
        client_cpu_s: float = 0.0,
    ) -> Report:
        errors = _all_errors(points, churn, scale)
        failed = sum(run.failed for p in points for s in (p.main, p.raw) if s for run in s.runs)
        return cls(
            scenario=scenario,
            aiocsi_version=version,
            started_at=started_at,
            wall_s=round(wall_s, _DIGITS),
            parameters=parameters,
            machine=machine,
            points=list(points),
            churn=churn,
            scale=scale,
            client_loop_lag_ms=Latency.of(loop_lag),
            client_cpu_s=round(client_cpu_s, _DIGITS),
            errors=dict(sorted(errors.items())),
            error_count=errors.total(),
            failed_units=failed,
            interrupted=interrupted,
            leftovers=list(leftovers),
        )

    @property
    def clean(self) -> bool:
        return not (self.error_count or self.failed_units or self.interrupted or self.leftovers)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"
