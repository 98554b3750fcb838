"""The `aiocsi info|volume|snapshot|capacity` command lines (stdlib only: `--help` stays quick).

A bad command line prints `USAGE: <command>: <reason>` on stderr and exits 2, as every
other client error prints `<CODE>: <message>` (docs/client.md lists the exit codes): each
parser here is made with `client=True`, which `aiocsi.cli`'s parser class turns into that.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import TYPE_CHECKING, NoReturn

from aiocsi.config import DEFAULT_ENDPOINT, ConfigError, parse_endpoint

if TYPE_CHECKING:
    from collections.abc import Callable

EXIT_USAGE = 2
ACCESS_MODES = (
    "SINGLE_NODE_WRITER",
    "SINGLE_NODE_READER_ONLY",
    "MULTI_NODE_READER_ONLY",
    "MULTI_NODE_SINGLE_WRITER",
    "MULTI_NODE_MULTI_WRITER",
    "SINGLE_NODE_SINGLE_WRITER",
    "SINGLE_NODE_MULTI_WRITER",
)
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m)?")
_DURATION_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0}


def usage_line(prog: str, message: str) -> str:
    return f"USAGE: {prog}: {message} (see `{prog} --help`)"


def usage_exit(prog: str, message: str) -> NoReturn:
    sys.stderr.write(usage_line(prog, message) + "\n")
    raise SystemExit(EXIT_USAGE)


def endpoint(value: str) -> str:
    """`unix:///abs/path`, `/abs/path` or a relative path, checked as `serve` checks it."""
    raw = value.strip()
    if raw and "://" not in raw and not raw.startswith("/"):
        raw = os.path.abspath(raw)  # noqa: PTH100 - a plain string in, a plain string out
    try:
        return str(parse_endpoint(raw))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration(value: str) -> float:
    match = _DURATION.fullmatch(value.strip())
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration (examples: 30, 10s, 500ms)")
    return float(match.group(1)) * _DURATION_SCALE[match.group(2) or "s"]


def size(value: str) -> int:
    from aiocsi.client.sizes import parse_size  # noqa: PLC0415 - imports the driver's config

    try:
        return parse_size(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def pair(value: str) -> tuple[str, str]:
    key, sep, item = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{value!r}: expected KEY=VALUE")
    return key.strip(), item


def access_mode(value: str) -> str:
    name = value.strip().upper().replace("-", "_")
    if name not in ACCESS_MODES:
        raise argparse.ArgumentTypeError(f"{value!r}: expected one of {', '.join(ACCESS_MODES)}")
    return name


def entries(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a whole number >= 1")
    return int(value)


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    env = os.environ.get("CSI_ENDPOINT")
    common.add_argument(
        "--endpoint",
        type=endpoint,
        default=env or DEFAULT_ENDPOINT,
        help=f"the driver's socket: unix:///path or a path [env CSI_ENDPOINT; default "
        f"{DEFAULT_ENDPOINT}" + (f"; now {env}]" if env else "]"),
    )
    common.add_argument(
        "--timeout", type=duration, default=30.0, help="per call: 30, 10s, 500ms [default 30s]"
    )
    common.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document, fields named as in the CSI messages",
    )
    return common


def _capability_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--block", action="store_true", help="a raw block volume, not a filesystem")
    p.add_argument("--fs-type", default="", help="filesystem, e.g. ext4 [default: the driver's]")
    p.add_argument(
        "--mount-flag",
        action="append",
        default=[],
        metavar="FLAG",
        help="a mount option; repeatable",
    )
    p.add_argument(
        "--access-mode",
        type=access_mode,
        default="SINGLE_NODE_WRITER",
        help="CSI access mode, e.g. single-node-writer [default SINGLE_NODE_WRITER]",
    )


def _contexts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--context",
        type=pair,
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="volume_context KEY=VALUE; repeatable [default: the volume's, when the "
        "driver can list or get volumes]",
    )
    p.add_argument(
        "--publish-context",
        metavar="KEY=VALUE",
        type=pair,
        action="append",
        default=[],
        help="publish_context KEY=VALUE (from `volume attach`); repeatable",
    )


def _params(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--param", type=pair, action="append", default=[], metavar="KEY=VALUE", help=what
    )


def _topology(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--topology", type=pair, action="append", default=[], metavar="KEY=VALUE", help=what
    )


def _paging(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-entries", type=entries, default=None, help="one page of at most N [default: all]"
    )
    p.add_argument("--starting-token", default="", help="where a page starts (its next_token)")


def _volume_tree(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("create", "CreateVolume", "NAME")
    p.add_argument("--size", type=size, default=None, help="1Gi, 500M, 1.5G or bytes")
    _capability_flags(p)
    _params(p, "StorageClass parameter; repeatable")
    _topology(p, "place the volume in this topology segment; repeatable")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--from-snapshot", metavar="ID", help="restore this snapshot")
    source.add_argument("--from-volume", metavar="ID", help="clone this volume")
    p = add("list", "ListVolumes")
    _paging(p)
    add("get", "ControllerGetVolume, else the volume's ListVolumes entry", "ID")
    add("delete", "DeleteVolume", "ID", many=True)
    p = add("expand", "ControllerExpandVolume, then NodeExpandVolume with --path", "ID")
    p.add_argument("--size", type=size, required=True, help="the new size: 2Gi, 1.5G, bytes")
    p.add_argument("--path", help="where the volume is published or staged (NodeExpandVolume)")
    p.add_argument("--staging-path", help="its staging path, for NodeExpandVolume")
    _capability_flags(p)
    p = add("stage", "NodeStageVolume", "ID")
    p.add_argument("--staging-path", required=True, help="created if missing, as kubelet does")
    _capability_flags(p)
    _contexts(p)
    p = add("unstage", "NodeUnstageVolume", "ID")
    p.add_argument("--staging-path", required=True)
    p = add("publish", "NodePublishVolume", "ID")
    p.add_argument("--target-path", required=True, help="its parent is created if missing")
    p.add_argument("--staging-path", help="where the volume is staged, if the driver stages")
    p.add_argument("--readonly", action="store_true")
    _capability_flags(p)
    _contexts(p)
    p = add("unpublish", "NodeUnpublishVolume", "ID")
    p.add_argument("--target-path", required=True)
    p = add("stats", "NodeGetVolumeStats: usage and volume condition", "ID")
    p.add_argument("--path", required=True, help="where the volume is published or staged")
    p.add_argument("--staging-path", help="its staging path, if the driver wants it")
    p = add("attach", "ControllerPublishVolume", "ID")
    p.add_argument("--node", required=True, help="the node id (see `aiocsi info`)")
    p.add_argument("--readonly", action="store_true")
    _capability_flags(p)
    _contexts(p)
    p = add("detach", "ControllerUnpublishVolume", "ID")
    p.add_argument("--node", required=True)


def _snapshot_tree(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("create", "CreateSnapshot", "NAME")
    p.add_argument("--source", required=True, metavar="ID", help="the volume to snapshot")
    _params(p, "VolumeSnapshotClass parameter; repeatable")
    p = add("list", "ListSnapshots")
    p.add_argument("--source", metavar="ID", help="only this volume's snapshots")
    _paging(p)
    add("get", "GetSnapshot, else the snapshot's ListSnapshots entry", "ID")
    add("delete", "DeleteSnapshot", "ID", many=True)


def _group(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    text: str,
    common: argparse.ArgumentParser,
    build: Callable[[Callable[..., argparse.ArgumentParser]], None],
) -> None:
    group = commands.add_parser(name, help=text, description=text, client=True)
    actions = group.add_subparsers(dest="action", metavar="ACTION", parser_class=type(group))
    group.set_defaults(func=lambda _args: usage_exit(group.prog, "name an action"))

    def add(
        action: str, rpc: str, operand: str | None = None, *, many: bool = False
    ) -> argparse.ArgumentParser:
        leaf: argparse.ArgumentParser = actions.add_parser(
            action, help=rpc, description=rpc, parents=[common], client=True
        )
        if operand is not None:
            leaf.add_argument(operand.lower(), metavar=operand, nargs="+" if many else None)
        leaf.set_defaults(func=run_client, client_command=f"{name} {action}")
        return leaf

    build(add)


def add_client_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`aiocsi info`, `aiocsi volume ...`, `aiocsi snapshot ...`, `aiocsi capacity`."""
    common = _common()
    info = commands.add_parser(
        "info",
        help="a CSI driver's plugin info, capabilities, node info and Probe (docs/client.md)",
        parents=[common],
        client=True,
    )
    info.set_defaults(func=run_client, client_command="info")
    _group(commands, "volume", "volumes of any CSI driver (docs/client.md)", common, _volume_tree)
    _group(commands, "snapshot", "snapshots of any CSI driver", common, _snapshot_tree)
    capacity = commands.add_parser("capacity", help="GetCapacity", parents=[common], client=True)
    _params(capacity, "StorageClass parameter; repeatable")
    _topology(capacity, "capacity in this topology segment; repeatable")
    _capability_flags(capacity)
    capacity.set_defaults(func=run_client, client_command="capacity")


def run_client(args: argparse.Namespace) -> int:
    from aiocsi.client.cli.run import run  # noqa: PLC0415 - grpclib only when a command runs

    return run(args)
