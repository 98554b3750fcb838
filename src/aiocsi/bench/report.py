"""The report of a run (every figure the tables and the JSON file hold), and the figures
of the `scale` scenario; the samples and percentiles they are made of: bench/stats.py."""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiocsi.bench.stats import DIGITS, Latency, Samples, to_ms

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiocsi.bench.stats import ChurnProbe, OpStats, Point


def _median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), DIGITS + 3) if values else None


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
                    median_ms=None if median is None else to_ms(median),
                    errors=dict(sorted(samples.errors.items())),
                )
            )
        return Scale(
            volumes=self.volumes,
            snapshots=self.snapshots,
            create_s=round(self.create_s, DIGITS),
            creates=[s.stats() for s in self.creates.values()],
            listings=listings,
            rss_bytes=dict(self.rss),
            restart=Restart(
                stop_s=[round(v, DIGITS + 3) for v in self.stop_s],
                to_ready_s=[round(v, DIGITS + 3) for v in self.to_ready_s],
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
            wall_s=round(wall_s, DIGITS),
            parameters=parameters,
            machine=machine,
            points=list(points),
            churn=churn,
            scale=scale,
            client_loop_lag_ms=Latency.of(loop_lag),
            client_cpu_s=round(client_cpu_s, DIGITS),
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
