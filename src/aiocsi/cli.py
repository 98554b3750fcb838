"""Command line: flags and environment -> Config; `aiocsi serve|bench|...`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from aiocsi import __version__
from aiocsi.bench.config import add_bench_flags
from aiocsi.client.cli.parser import add_client_commands, usage_exit
from aiocsi.config import (
    DEFAULT_DRIVER_NAME,
    DEFAULT_ENDPOINT,
    DEFAULT_POOL,
    Config,
    ConfigError,
    EventLoop,
    LogFormat,
    default_node_id,
    parse_endpoint,
    parse_http_endpoint,
    parse_mode,
    parse_octal_mode,
    parse_size,
    validate,
)

EXIT_USAGE = 2
T = TypeVar("T")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line, exit code 2.

    The client commands (`client=True`) say it as `USAGE: ...`, in the `<CODE>: <message>`
    form of their other errors.
    """

    def __init__(self, *args: Any, client: bool = False, **kwargs: Any) -> None:  # noqa: ANN401 - argparse's own signature
        super().__init__(*args, **kwargs)
        self.client = client

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if self.client and extras:  # said by the command they were given to
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        if self.client:
            usage_exit(self.prog, message)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _flag(parser: argparse.ArgumentParser, flag: str, env: str, default: str, text: str) -> None:
    parser.add_argument(
        flag, default=_env(env, default), help=f"{text} [env {env}; default {default}]"
    )


def _add_serve_flags(p: argparse.ArgumentParser) -> None:
    _flag(
        p,
        "--endpoint",
        "CSI_ENDPOINT",
        DEFAULT_ENDPOINT,
        "unix socket: unix:///abs/path or /abs/path",
    )
    _flag(p, "--mode", "AIOCSI_MODE", "all", "services to serve: all, controller or node")
    p.add_argument(
        "--node-id",
        default=None,
        help="this node's id [env KUBE_NODE_NAME, then NODE_ID; default: the hostname]",
    )
    _flag(p, "--driver-name", "AIOCSI_DRIVER_NAME", DEFAULT_DRIVER_NAME, "CSI driver name")
    _flag(p, "--socket-mode", "AIOCSI_SOCKET_MODE", "0660", "permission bits of the socket (octal)")
    _flag(p, "--pool", "AIOCSI_POOL", DEFAULT_POOL, "directory holding volume images and state")
    _flag(p, "--log-format", "AIOCSI_LOG_FORMAT", "json", "json (one object per line) or console")
    _flag(p, "--log-level", "AIOCSI_LOG_LEVEL", "info", "debug, info, warning or error")
    _flag(
        p,
        "--event-loop",
        "AIOCSI_EVENT_LOOP",
        "uvloop",
        "uvloop (faster under churn) or asyncio (the standard library's)",
    )
    _flag(
        p,
        "--shutdown-grace",
        "AIOCSI_SHUTDOWN_GRACE",
        "30",
        "seconds to let in-flight calls finish after SIGTERM/SIGINT",
    )
    _flag(
        p,
        "--enable-attach",
        "AIOCSI_ENABLE_ATTACH",
        "false",
        "serve ControllerPublish/Unpublish (true/false)",
    )
    _flag(
        p,
        "--controller-expand",
        "AIOCSI_CONTROLLER_EXPAND",
        "true",
        "serve ControllerExpandVolume (false for per-node deployments: the resizer then "
        "leaves growth to NodeExpandVolume on the volume's node)",
    )
    _flag(
        p,
        "--max-volumes-per-node",
        "AIOCSI_MAX_VOLUMES_PER_NODE",
        "0",
        "volumes one node may hold (0 = no limit)",
    )
    _flag(
        p,
        "--overcommit",
        "AIOCSI_OVERCOMMIT",
        "1.0",
        "bytes sparse images may still allocate per free byte of the pool filesystem",
    )
    _flag(p, "--max-operations", "AIOCSI_MAX_OPERATIONS", "64", "volume operations running at once")
    _flag(p, "--max-mkfs", "AIOCSI_MAX_MKFS", "4", "filesystem formats running at once")
    _flag(
        p,
        "--default-volume-size",
        "AIOCSI_DEFAULT_VOLUME_SIZE",
        "1Gi",
        "size of a volume whose request names none",
    )
    p.add_argument(
        "--http-endpoint",
        default=_env("AIOCSI_HTTP_ENDPOINT", ""),
        help="HOST:PORT serving /metrics, /healthz and /readyz (:9808 = every interface) "
        "[env AIOCSI_HTTP_ENDPOINT; default: off]",
    )
    p.add_argument(
        "--allow-mount-flag",
        action="append",
        default=None,
        help="one more mount flag volumes may ask for (exact text, e.g. exec); repeatable "
        "[env AIOCSI_ALLOWED_MOUNT_FLAGS, comma-separated; default none]",
    )
    _flag(
        p,
        "--flexvolume-endpoint",
        "AIOCSI_FLEXVOLUME_ENDPOINT",
        "",
        "also serve the Flexvolume front end on this unix socket (docs/flexvolume.md); empty: off",
    )
    p.add_argument(
        "--allowed-path-root",
        action="append",
        default=None,
        help="root under which staging/target paths may lie; repeatable "
        "[env AIOCSI_ALLOWED_PATH_ROOTS, colon-separated; default /var/lib/kubelet]",
    )


def _convert(name: str, value: str, parse: Callable[[str], T]) -> T:
    try:
        return parse(value)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{name} {value!r}: {exc}") from None


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"expected true or false, got {value!r}")


def _parse_log_level(value: str) -> str:
    if value.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log level {value!r}: expected debug, info, warning or error")
    return value.lower()


def _mount_flags(args: argparse.Namespace) -> frozenset[str]:
    from aiocsi.engine.policy import operator_mount_flag  # noqa: PLC0415 - heavy

    flags = args.allow_mount_flag or [
        f for f in _env("AIOCSI_ALLOWED_MOUNT_FLAGS", "").split(",") if f
    ]
    try:
        return frozenset(operator_mount_flag(f) for f in flags)
    except ValueError as exc:
        raise ConfigError(f"--allow-mount-flag: {exc}") from None


def config_from_args(args: argparse.Namespace) -> Config:
    roots = args.allowed_path_root or [
        r for r in _env("AIOCSI_ALLOWED_PATH_ROOTS", "/var/lib/kubelet").split(":") if r
    ]
    return validate(
        Config(
            socket_path=parse_endpoint(args.endpoint),
            node_id=args.node_id or default_node_id(),
            driver_name=args.driver_name,
            mode=parse_mode(args.mode),
            socket_mode=parse_octal_mode(args.socket_mode),
            pool=Path(args.pool),
            log_format=_convert("--log-format", args.log_format, LogFormat),
            log_level=_parse_log_level(args.log_level),
            event_loop=_convert("--event-loop", args.event_loop, EventLoop),
            shutdown_grace=_convert("--shutdown-grace", args.shutdown_grace, float),
            enable_attach=_convert("--enable-attach", args.enable_attach, _parse_bool),
            controller_expand=_convert("--controller-expand", args.controller_expand, _parse_bool),
            max_volumes_per_node=_convert("--max-volumes-per-node", args.max_volumes_per_node, int),
            overcommit=_convert("--overcommit", args.overcommit, float),
            max_operations=_convert("--max-operations", args.max_operations, int),
            max_mkfs=_convert("--max-mkfs", args.max_mkfs, int),
            default_volume_size=_convert(
                "--default-volume-size", args.default_volume_size, parse_size
            ),
            allowed_path_roots=tuple(Path(r) for r in roots),
            allowed_mount_flags=_mount_flags(args),
            http_endpoint=parse_http_endpoint(args.http_endpoint),
            flexvolume_socket_path=(
                parse_endpoint(args.flexvolume_endpoint) if args.flexvolume_endpoint else None
            ),
        )
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    from aiocsi.server.app import run  # noqa: PLC0415 - keep `--help` and `--version` fast

    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"aiocsi serve: error: {exc}", file=sys.stderr)  # noqa: T201 - CLI output
        return EXIT_USAGE
    return run(config)


def _cmd_bench(args: argparse.Namespace) -> int:
    from aiocsi.bench.cli import main as bench  # noqa: PLC0415 - grpclib only when benching

    return bench(args)


def _cmd_flexvolume(args: argparse.Namespace) -> int:
    from aiocsi.flexvolume.cli import main as flexvolume  # noqa: PLC0415 - no server imports

    return flexvolume(args.flexvolume_endpoint, args.argv)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aiocsi", description="Asynchronous CSI driver for loop-device volumes.")
    parser.add_argument("--version", action="version", version=f"aiocsi {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser("serve", help="serve the CSI gRPC services on a unix socket")
    _add_serve_flags(serve)
    serve.set_defaults(func=_cmd_serve)
    bench = commands.add_parser("bench", help="load-test a CSI driver socket (docs/benchmarks.md)")
    add_bench_flags(bench)
    bench.set_defaults(func=_cmd_bench)
    flex = commands.add_parser(
        "flexvolume",
        help="run a Flexvolume op against the driver, or install the executable "
        "(docs/flexvolume.md)",
    )
    _flag(
        flex,
        "--flexvolume-endpoint",
        "AIOCSI_FLEXVOLUME_ENDPOINT",
        "",
        "the driver's Flexvolume socket: unix:///abs/path",
    )
    flex.add_argument("argv", nargs=argparse.REMAINDER, help="install ... | OP ARGS...")
    flex.set_defaults(func=_cmd_flexvolume)
    add_client_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
