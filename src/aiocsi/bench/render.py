"""What a person sees at the end: tables, an optional plot (progress: bench/progress.py).

rich is optional (`pip install aiocsi[bench]`): without it the same tables are printed as
plain text. matplotlib is optional too (`aiocsi[plot]`), for `sweep --plot` only.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path
    from typing import TextIO

    from aiocsi.bench.report import Report
    from aiocsi.bench.stats import Latency, OpStats, Point, Series

try:
    from rich import box
    from rich.console import Console
    from rich.table import Table as RichTable
except ImportError:  # the `bench` extra is not installed: plain text
    HAVE_RICH = False
else:
    HAVE_RICH = True

_GIB = 1024**3
_PLAIN_WIDTH = 160
_LATENCY_HEADERS = ("p50 ms", "p90 ms", "p99 ms", "max ms")


# -- tables ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    title: str
    headers: tuple[str, ...]
    rows: list[tuple[str, ...]]


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _latency(lat: Latency | None) -> tuple[str, ...]:
    if lat is None:
        return ("-",) * len(_LATENCY_HEADERS)
    return (_num(lat.p50), _num(lat.p90), _num(lat.p99), _num(lat.max))


def _codes(errors: dict[str, int]) -> str:
    return ", ".join(f"{code} {n}" for code, n in errors.items()) or "-"


def _series_row(concurrency: int, series: Series, ratio: str) -> tuple[str, ...]:
    runs = series.runs
    per_run = " ".join(_num(r.throughput_per_s) for r in runs) if len(runs) > 1 else ""
    failed = sum(r.failed for r in runs)
    return (
        str(concurrency),
        series.kind,
        _num(series.throughput_median, 2),
        per_run,
        *_latency(series.latency_ms),
        str(sum(r.succeeded for r in runs)),
        str(failed),
        ratio,
    )


def throughput_table(points: list[Point]) -> Table:
    unit = next((s.unit for p in points for s in (p.main, p.raw) if s), "units")
    rows: list[tuple[str, ...]] = []
    for point in points:
        if point.main is not None:
            rows.append(_series_row(point.concurrency, point.main, _num(point.main_to_raw, 2)))
        if point.raw is not None:
            rows.append(_series_row(point.concurrency, point.raw, ""))
    versus = next((p.raw.kind for p in points if p.raw), "raw")
    headers = (
        *("conc", "kind", f"{unit}/s", "per run", *_LATENCY_HEADERS),
        *("ok", "failed", f"vs {versus}"),
    )
    return Table(f"Throughput ({unit}/s: median of runs; latency of whole {unit})", headers, rows)


def steps_table(title: str, ops: list[OpStats]) -> Table:
    rows = [
        (op.name, str(op.calls), str(op.ok), _codes(op.errors), *_latency(op.latency_ms))
        for op in ops
    ]
    return Table(title, ("step", "calls", "ok", "errors", *_LATENCY_HEADERS), rows)


def p99_matrix(title: str, points: list[Point], pick: str) -> Table:
    """Rows: steps; columns: concurrencies; cells: the step's p99 in ms."""
    names: dict[str, dict[int, str]] = {}
    for point in points:
        series = point.main if pick == "main" else point.raw
        for op in series.operations if series else ():
            names.setdefault(op.name, {})[point.concurrency] = _num(
                op.latency_ms.p99 if op.latency_ms else None
            )
    concurrencies = [p.concurrency for p in points]
    rows = [(name, *(cells.get(c, "-") for c in concurrencies)) for name, cells in names.items()]
    return Table(title, ("step", *(f"c={c}" for c in concurrencies)), rows)


def _step_tables(points: list[Point]) -> list[Table]:
    if len(points) == 1:
        point = points[0]
        return [
            steps_table(
                f"Steps of {series.kind} at concurrency {point.concurrency} "
                "(latency of successful calls)",
                series.operations,
            )
            for series in (point.main, point.raw)
            if series is not None
        ]
    tables = [p99_matrix("p99 ms of each step by concurrency", points, "main")]
    if any(p.raw for p in points):
        tables.append(p99_matrix("raw: p99 ms of each step by concurrency", points, "raw"))
    return tables


def _cleanup_table(points: list[Point]) -> Table | None:
    ops = [
        dataclasses.replace(op, name=f"{s.kind} c={p.concurrency}: {op.name}")
        for p in points
        for s in (p.main, p.raw)
        if s
        for op in s.cleanup
    ]
    if not ops:
        return None
    return steps_table("Cleanup calls after failed or interrupted lifecycles", ops)


def churn_table(report: Report) -> Table | None:
    churn = report.churn
    if churn is None:
        return None
    rows = [
        (label, str(op.calls), _codes(op.errors), *_latency(op.latency_ms))
        for label, op in (("idle", churn.idle), ("under load", churn.under_load))
    ]
    title = f"Probe at {churn.rate_per_s:g}/s: p99 under load / idle = {_num(churn.p99_ratio, 2)}"
    if report.scale is not None:
        title += " (load: the listings above, back to back)"
    return Table(title, ("Probe", "calls", "errors", *_LATENCY_HEADERS), rows)


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 1024**2:.1f}"


def scale_tables(report: Report) -> list[Table]:
    scale = report.scale
    if scale is None:
        return []
    creates = steps_table(
        f"{scale.volumes} volumes, {scale.snapshots} snapshots created in {scale.create_s:.1f} s",
        scale.creates,
    )
    listings = Table(
        "Full listings (next_token followed to the end; latency of whole listings)",
        ("listing", "entries", "pages", "listings", "errors", *_LATENCY_HEADERS),
        [
            (
                listing.name,
                str(listing.entries),
                str(listing.pages),
                str(listing.latency_ms.count if listing.latency_ms else 0),
                _codes(listing.errors),
                *_latency(listing.latency_ms),
            )
            for listing in scale.listings
        ],
    )
    memory = Table(
        "Driver memory (MiB)",
        ("when", "MiB"),
        [(when.replace("_", " "), _mib(value)) for when, value in scale.rss_bytes.items()],
    )
    restart = scale.restart
    restarts = Table(
        "Restart on the same state (seconds; median of runs)",
        ("phase", "median s", "per run"),
        [
            (label, _num(median, 3), " ".join(f"{v:.3f}" for v in runs))
            for label, median, runs in (
                ("SIGTERM to exit", restart.stop_median_s, restart.stop_s),
                ("start to Probe ready", restart.to_ready_median_s, restart.to_ready_s),
            )
        ],
    )
    return [creates, listings, memory, restarts]


def tables(report: Report) -> list[Table]:
    found = [throughput_table(report.points), *_step_tables(report.points)] if report.points else []
    found += scale_tables(report)
    found += [t for t in (churn_table(report), _cleanup_table(report.points)) if t is not None]
    if report.errors:
        found.append(
            Table(
                "Errors by code",
                ("code", "count"),
                [(code, str(n)) for code, n in report.errors.items()],
            )
        )
    return found


def header(report: Report) -> str:
    m = report.machine
    memory = m.get("memory_bytes")
    mem = f"{memory / _GIB:.1f} GiB" if isinstance(memory, int) else "? GiB"
    return (
        f"aiocsi bench {report.scenario} (aiocsi {report.aiocsi_version}) on "
        f"{m.get('nproc')} CPUs, {mem}, kernel {m.get('kernel')}"
    )


def footer(report: Report) -> list[str]:
    cores = report.client_cpu_s / report.wall_s if report.wall_s > 0 else 0.0
    client = f"client (this process): {report.client_cpu_s:.1f} s CPU = {cores:.2f} cores"
    if report.client_loop_lag_ms is not None:
        lag = report.client_loop_lag_ms
        client += f"; its event loop lag p99 {lag.p99:.1f} ms, max {lag.max:.1f} ms"
    lines = [client]
    if report.interrupted:
        lines.append(f"INTERRUPTED by {report.interrupted}: the figures cover a partial run")
    lines.extend(f"LEFT OVER: {item}" for item in report.leftovers)
    verdict = (
        "no errors"
        if report.clean
        else (f"{report.error_count} failed calls, {report.failed_units} failed units")
    )
    lines.append(f"{verdict}; wall time {report.wall_s:.1f} s")
    return lines


def _plain(table: Table) -> str:
    cells = [table.headers, *table.rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(table.headers))]
    lines = [table.title]
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                cell.rjust(w) if i else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(report: Report, out: TextIO) -> None:
    if not HAVE_RICH:
        blocks = [header(report), *(_plain(t) for t in tables(report)), "\n".join(footer(report))]
        out.write("\n\n".join(blocks) + "\n")
        return
    # Not a terminal (a file, CI log): wide enough that no column is cut.
    console = Console(file=out, width=None if out.isatty() else _PLAIN_WIDTH)
    console.print(header(report), style="bold", highlight=False)
    for table in tables(report):
        rich_table = RichTable(title=table.title, box=box.SIMPLE_HEAD, title_justify="left")
        for i, name in enumerate(table.headers):
            rich_table.add_column(name, justify="left" if i == 0 else "right")
        for row in table.rows:
            rich_table.add_row(*row)
        console.print(rich_table)
    for line in footer(report):
        console.print(line, highlight=False)


# -- plot -----------------------------------------------------------------------------------


def plot_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot_sweep(report: Report, path: Path) -> None:
    """Throughput and whole-lifecycle p99 against concurrency; raw drawn when measured."""
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")  # files only, never a window
    pyplot: Any = importlib.import_module("matplotlib.pyplot")
    figure, (rate_axis, p99_axis) = pyplot.subplots(1, 2, figsize=(11, 4.5))
    for pick, style in (("main", "o-"), ("raw", "s--")):
        drawn = [
            (p.concurrency, s)
            for p in report.points
            if (s := p.main if pick == "main" else p.raw) is not None
        ]
        if not drawn:
            continue
        label = drawn[0][1].kind
        xs = [c for c, _ in drawn]
        rate_axis.plot(xs, [s.throughput_median for _, s in drawn], style, label=label)
        p99_axis.plot(
            xs,
            [s.latency_ms.p99 if s.latency_ms else float("nan") for _, s in drawn],
            style,
            label=label,
        )
    unit = next((s.unit for p in report.points for s in (p.main, p.raw) if s), "units")
    ticks = [p.concurrency for p in report.points]
    per_unit = unit.removesuffix("s")
    for axis, ylabel in ((rate_axis, f"{unit}/s (median)"), (p99_axis, f"p99 ms per {per_unit}")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(ticks, [str(t) for t in ticks])
        axis.minorticks_off()
        axis.set_xlabel("concurrency")
        axis.set_ylabel(ylabel)
        axis.grid(visible=True, alpha=0.3)
        axis.legend()
    figure.suptitle(header(report), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
