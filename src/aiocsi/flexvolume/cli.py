"""`aiocsi flexvolume install ...` and `aiocsi flexvolume OP ARGS...`."""

from __future__ import annotations

import sys
from pathlib import Path

from aiocsi.cli import _Parser
from aiocsi.config import ConfigError, parse_endpoint
from aiocsi.flexvolume import executable
from aiocsi.flexvolume.install import DEFAULT_PLUGIN_DIR, install


def _install(endpoint: str, argv: list[str]) -> int:
    parser = _Parser(prog="aiocsi flexvolume install")
    parser.add_argument(
        "--plugin-dir",
        default=DEFAULT_PLUGIN_DIR,
        help=f"the kubelet's --volume-plugin-dir [default {DEFAULT_PLUGIN_DIR}]",
    )
    parser.add_argument(
        "--flexvolume-endpoint",
        default=endpoint,
        help="the driver's Flexvolume socket, as given to `aiocsi serve` (unix:///abs/path)",
    )
    args = parser.parse_args(argv)
    if not args.flexvolume_endpoint:
        parser.error("--flexvolume-endpoint is required")
    try:
        socket_path = parse_endpoint(args.flexvolume_endpoint)
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        target = install(Path(args.plugin_dir), socket_path)
    except OSError as exc:
        print(f"aiocsi flexvolume install: error: {exc}", file=sys.stderr)  # noqa: T201 - CLI
        return 1
    print(f"installed {target} (driver aiocsi.dev/loop -> {socket_path})")  # noqa: T201 - CLI
    return 0


def main(endpoint: str, argv: list[str]) -> int:
    if argv and argv[0] == "install":
        return _install(endpoint, argv[1:])
    # An op, answered exactly as the installed executable answers it: one JSON object.
    try:
        socket_path = str(parse_endpoint(endpoint)) if endpoint else executable.ENDPOINT
    except ConfigError as exc:
        return executable.report(executable.failure(f"--flexvolume-endpoint: {exc}"))
    return executable.run(argv, socket_path)
