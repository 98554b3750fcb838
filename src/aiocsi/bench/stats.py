"""Samples, percentiles and the figures of runs, points and churn (the report: report.py).

Latencies are kept in seconds while a run goes on and reported in milliseconds. A step's
latency figures cover its successful calls; failed calls are counted by code instead, so a
fast refusal never flatters the percentiles.
"""

from __future__ import annotations

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
DIGITS = 3


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


def to_ms(seconds: float) -> float:
    return round(seconds * MS_PER_S, DIGITS)


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
        p50, p90, p99 = (to_ms(percentile(ordered, q)) for q in PERCENTILES)
        return cls(
            count=len(ordered),
            min=to_ms(ordered[0]),
            mean=to_ms(statistics.fmean(ordered)),
            p50=p50,
            p90=p90,
            p99=p99,
            max=to_ms(ordered[-1]),
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
        elapsed = round(self.elapsed, DIGITS + 3)
        succeeded = len(self.units.latencies)
        return RunResult(
            kind=self.kind,
            unit=self.unit,
            concurrency=self.concurrency,
            elapsed_s=elapsed,
            attempted=self.units.calls,
            succeeded=succeeded,
            failed=self.units.errors.total(),
            throughput_per_s=round(succeeded / elapsed, DIGITS) if elapsed > 0 else 0.0,
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
            throughput_median=round(statistics.median(r.throughput_per_s for r in runs), DIGITS),
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
            ratio = round(main.throughput_median / raw.throughput_median, DIGITS)
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
            ratio = round(load_stats.latency_ms.p99 / idle_stats.latency_ms.p99, DIGITS)
        return cls(rate, idle_stats, load_stats, ratio)
