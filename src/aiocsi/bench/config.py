"""`aiocsi bench` flags -> one frozen BenchConfig. Standard library only: `aiocsi --help`
imports this module, and must stay fast.
"""

from __future__ import annotations

import argparse
import enum
import shlex
from dataclasses import dataclass
from pathlib import Path

from aiocsi.config import ConfigError, parse_endpoint, parse_size

MiB = 1024 * 1024
DEFAULT_CONCURRENCIES = (1, 2, 4, 8, 16, 32)
DEFAULT_LIFECYCLES = 50
DEFAULT_PROBE_CALLS = 5000
CHURN_CONCURRENCY = 16
# Where the per-call cost is judged (issue 16): as many callers as churn's lifecycles.
BARE_CONCURRENCY = 16
MAX_NAME_PREFIX = 64
DEFAULT_SIZE = "64Mi"
# scale: many volumes that are only created, never staged: the smallest ext4 takes.
SCALE_SIZE = "4Mi"
DEFAULT_SCALE_VOLUMES = 1000


class Scenario(enum.StrEnum):
    PROBE = "probe"
    LIFECYCLE = "lifecycle"
    CHURN = "churn"
    SWEEP = "sweep"
    RAW = "raw"
    SCALE = "scale"

    @property
    def runs_lifecycles(self) -> bool:
        return self not in (Scenario.PROBE, Scenario.SCALE)

    @property
    def needs_driver(self) -> bool:
        return self is not Scenario.RAW


class Access(enum.StrEnum):
    MOUNT = "mount"
    BLOCK = "block"


@dataclass(frozen=True)
class VolumeSpec:
    """What every lifecycle asks for."""

    access: Access
    fs_type: str
    size: int
    exact_size: bool
    write_bytes: int


@dataclass(frozen=True)
class BenchConfig:
    scenario: Scenario
    endpoint: Path | None
    spawn: bool
    driver_args: tuple[str, ...]
    driver_log: Path | None
    workdir: Path | None
    concurrencies: tuple[int, ...]
    count: int | None
    duration: float | None
    repeat: int
    timeout: float
    rpc_timeout: float
    cleanup_timeout: float
    volume: VolumeSpec
    compare_raw: bool
    compare_bare: bool
    probe_rate: float
    idle_probes: int
    volumes: int
    snapshots: int
    name_prefix: str
    json_path: Path | None
    plot_path: Path | None
    progress: bool | None  # None: when stdout is a terminal

    @property
    def probes_at_rate(self) -> bool:
        """Whether the run has a Probe stream at --probe-rate, idle and under load."""
        return self.scenario in (Scenario.CHURN, Scenario.SCALE)

    def parameters(self) -> dict[str, object]:
        """The run's parameters as the JSON report records them."""
        return {
            "scenario": self.scenario.value,
            "endpoint": str(self.endpoint) if self.endpoint else None,
            "spawn": self.spawn,
            "driver_args": list(self.driver_args),
            "concurrencies": list(self.concurrencies),
            "count": self.count,
            "duration_s": self.duration,
            "repeat": self.repeat,
            "timeout_s": self.timeout,
            "rpc_timeout_s": self.rpc_timeout,
            "access": self.volume.access.value,
            "fs_type": self.volume.fs_type if self.volume.access is Access.MOUNT else None,
            "size_bytes": self.volume.size,
            "exact_size": self.volume.exact_size,
            "write_bytes": self.volume.write_bytes,
            "compare_raw": self.compare_raw,
            "compare_bare": self.compare_bare,
            "probe_rate_per_s": self.probe_rate if self.probes_at_rate else None,
            "idle_probes": self.idle_probes if self.probes_at_rate else None,
            "volumes": self.volumes if self.scenario is Scenario.SCALE else None,
            "snapshots": self.snapshots if self.scenario is Scenario.SCALE else None,
            "name_prefix": self.name_prefix,
        }


def add_bench_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "scenario",
        choices=[s.value for s in Scenario],
        help="probe, lifecycle, churn, sweep, raw or scale (docs/benchmarks.md)",
    )
    target = p.add_mutually_exclusive_group()
    target.add_argument("--endpoint", help="socket of a running CSI driver: unix:///abs or /abs")
    target.add_argument(
        "--spawn",
        action="store_true",
        help="start `aiocsi serve` on a temporary pool and socket, stop it after",
    )
    p.add_argument(
        "--driver-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra flag(s) for the spawned driver, e.g. --driver-arg=--max-operations=1"
        " (repeatable; shell-split)",
    )
    p.add_argument("--driver-log", type=Path, help="keep the spawned driver's output in this file")
    p.add_argument(
        "--workdir",
        type=Path,
        help="parent of the run's fresh work directory [default: the system temp dir]",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        help="lifecycles, calls or (scale) creates in flight "
        f"[default 4; churn, scale {CHURN_CONCURRENCY}]",
    )
    p.add_argument(
        "--concurrencies",
        default=",".join(map(str, DEFAULT_CONCURRENCIES)),
        help="sweep: comma-separated concurrencies [default %(default)s]",
    )
    p.add_argument(
        "--count",
        type=int,
        help="units per run: lifecycles, or calls for probe "
        f"[default {DEFAULT_LIFECYCLES}; probe {DEFAULT_PROBE_CALLS}; no limit "
        "with --duration]",
    )
    p.add_argument("--duration", type=float, help="seconds per run to keep starting units")
    p.add_argument("--repeat", type=int, default=1, help="runs per concurrency; medians reported")
    p.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds for the whole run before it stops and cleans up [%(default)s]",
    )
    p.add_argument(
        "--rpc-timeout",
        type=float,
        default=120.0,
        help="deadline of each call in seconds [%(default)s]",
    )
    p.add_argument(
        "--cleanup-timeout",
        type=float,
        default=120.0,
        help="seconds allowed for deleting what is left after errors [%(default)s]",
    )
    p.add_argument("--access", choices=[a.value for a in Access], default="mount")
    p.add_argument("--fs-type", default="ext4", help="filesystem of mount volumes [%(default)s]")
    p.add_argument(
        "--size", help=f"volume size, e.g. 64Mi [default {DEFAULT_SIZE}; scale {SCALE_SIZE}]"
    )
    p.add_argument(
        "--exact-size",
        action="store_true",
        help="ask for exactly --size (limit_bytes = required_bytes)",
    )
    p.add_argument(
        "--write",
        default="0",
        metavar="BYTES",
        help="bytes written and fsynced through each published volume [%(default)s]",
    )
    p.add_argument(
        "--compare-raw",
        action="store_true",
        help="lifecycle/sweep: also run `raw` at each concurrency; report the ratio",
    )
    p.add_argument(
        "--compare-bare",
        action="store_true",
        help="probe: also run a bare grpclib server on the same stubs, interleaved; "
        f"report both and the ratio [concurrency {BARE_CONCURRENCY}]",
    )
    p.add_argument(
        "--probe-rate",
        type=float,
        default=100.0,
        help="churn, scale: Probe calls per second, idle and under load [%(default)s]",
    )
    p.add_argument(
        "--idle-probes",
        type=int,
        default=500,
        help="churn, scale: Probe calls measured before the load starts [%(default)s]",
    )
    p.add_argument(
        "--volumes",
        type=int,
        help=f"scale: volumes created before measuring [{DEFAULT_SCALE_VOLUMES}]",
    )
    p.add_argument(
        "--snapshots",
        type=int,
        help="scale: snapshots created, of those volumes in turn [0]",
    )
    p.add_argument("--name-prefix", default="bench", help="volume name prefix [%(default)s]")
    p.add_argument("--json", type=Path, dest="json_path", help="write the full report here")
    p.add_argument(
        "--plot",
        type=Path,
        dest="plot_path",
        help="sweep: draw throughput and p99 against concurrency (needs matplotlib)",
    )
    progress = p.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress",
        action="store_true",
        default=None,
        help="always show progress [default: when stdout is a terminal]",
    )
    progress.add_argument("--no-progress", action="store_false", dest="progress")


def _positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


def _size(name: str, value: str) -> int:
    try:
        return parse_size(value)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _concurrencies(args: argparse.Namespace, scenario: Scenario) -> tuple[int, ...]:
    if scenario is Scenario.SWEEP:
        try:
            values = tuple(int(v) for v in args.concurrencies.split(",") if v.strip())
        except ValueError:
            raise ConfigError(
                f"--concurrencies {args.concurrencies!r}: expected e.g. 1,2,4"
            ) from None
        if not values:
            raise ConfigError("--concurrencies names no concurrency")
    elif args.concurrency is not None:
        values = (args.concurrency,)
    elif scenario in (Scenario.CHURN, Scenario.SCALE):
        values = (CHURN_CONCURRENCY,)
    else:
        values = (BARE_CONCURRENCY if args.compare_bare else 4,)
    for value in values:
        _positive("concurrency", value)
    return values


def _count(args: argparse.Namespace, scenario: Scenario) -> int | None:
    if args.count is not None:
        _positive("--count", args.count)
        count: int = args.count
        return count
    if args.duration is not None:
        return None
    return DEFAULT_PROBE_CALLS if scenario is Scenario.PROBE else DEFAULT_LIFECYCLES


def _endpoint(args: argparse.Namespace, scenario: Scenario) -> Path | None:
    if not scenario.needs_driver:
        if args.endpoint or args.spawn:
            raise ConfigError("raw runs without a driver: drop --endpoint/--spawn")
        return None
    if args.spawn:
        return None
    if not args.endpoint:
        raise ConfigError(f"{scenario.value} needs --endpoint SOCKET or --spawn")
    return parse_endpoint(args.endpoint)


def _volume(args: argparse.Namespace) -> VolumeSpec:
    access = Access(args.access)
    if access is Access.MOUNT and not args.fs_type:
        raise ConfigError("--fs-type must not be empty for mount volumes")
    default = SCALE_SIZE if args.scenario == Scenario.SCALE else DEFAULT_SIZE
    size = _size("--size", args.size or default)
    write = _size("--write", args.write)
    _positive("--size", size)
    if write > size:
        raise ConfigError(f"--write {write} exceeds --size {size}")
    return VolumeSpec(access, args.fs_type, size, args.exact_size, write)


def _check_target_flags(args: argparse.Namespace, scenario: Scenario) -> None:
    if (args.driver_arg or args.driver_log) and not args.spawn:
        raise ConfigError("--driver-arg and --driver-log need --spawn")
    if args.compare_raw and scenario not in (Scenario.LIFECYCLE, Scenario.SWEEP):
        raise ConfigError("--compare-raw applies to lifecycle and sweep")
    if args.compare_bare and scenario is not Scenario.PROBE:
        raise ConfigError("--compare-bare applies to probe")
    if args.plot_path and scenario is not Scenario.SWEEP:
        raise ConfigError("--plot applies to sweep")
    if scenario is Scenario.SCALE:
        if not args.spawn:
            # It reads the driver's memory and restarts it: only a driver of its own.
            raise ConfigError("scale needs --spawn")
        if (args.volumes is not None and args.volumes < 1) or (args.snapshots or 0) < 0:
            raise ConfigError("scale needs --volumes >= 1 and --snapshots >= 0")
    elif args.volumes is not None or args.snapshots is not None:
        raise ConfigError("--volumes and --snapshots apply to scale")
    if len(args.name_prefix.encode()) > MAX_NAME_PREFIX or not args.name_prefix:
        raise ConfigError(f"--name-prefix must be 1..{MAX_NAME_PREFIX} bytes")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Build and check the run's configuration; a bad value raises ConfigError (one line)."""
    scenario = Scenario(args.scenario)
    _check_target_flags(args, scenario)
    for name in ("duration", "timeout", "rpc_timeout", "cleanup_timeout", "probe_rate"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    _positive("--repeat", args.repeat)
    _positive("--idle-probes", args.idle_probes)
    return BenchConfig(
        scenario=scenario,
        endpoint=_endpoint(args, scenario),
        spawn=bool(args.spawn),
        driver_args=tuple(word for arg in args.driver_arg for word in shlex.split(arg)),
        driver_log=args.driver_log.absolute() if args.driver_log else None,
        workdir=args.workdir.absolute() if args.workdir else None,
        concurrencies=_concurrencies(args, scenario),
        count=_count(args, scenario),
        duration=args.duration,
        repeat=args.repeat,
        timeout=args.timeout,
        rpc_timeout=args.rpc_timeout,
        cleanup_timeout=args.cleanup_timeout,
        volume=_volume(args),
        compare_raw=args.compare_raw,
        compare_bare=args.compare_bare,
        probe_rate=args.probe_rate,
        idle_probes=args.idle_probes,
        volumes=args.volumes or DEFAULT_SCALE_VOLUMES,
        snapshots=args.snapshots or 0,
        name_prefix=args.name_prefix,
        json_path=args.json_path,
        plot_path=args.plot_path,
        progress=args.progress,
    )
