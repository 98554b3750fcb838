"""`aiocsi volume stage|unstage|publish|unpublish|stats`: the Node side, as a CO calls it.

Like the kubelet, the client makes the staging directory and the target's parent before
asking; the driver makes the mount (or device) at the target itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from aiocsi._proto.csi import v1 as csi
from aiocsi.client.cli.render import Fields, Output, Table, message_json
from aiocsi.client.cli.session import NODE, ClientError, NodeCap, Rpc, Session, bad_usage
from aiocsi.client.cli.volumes import capability_of, find_volume, request_json
from aiocsi.client.sizes import human_size

if TYPE_CHECKING:
    import argparse

STAGE = Rpc(NODE, "NodeStageVolume", NodeCap.STAGE_UNSTAGE_VOLUME)
UNSTAGE = Rpc(NODE, "NodeUnstageVolume", NodeCap.STAGE_UNSTAGE_VOLUME)
PUBLISH = Rpc(NODE, "NodePublishVolume")
UNPUBLISH = Rpc(NODE, "NodeUnpublishVolume")
STATS = Rpc(NODE, "NodeGetVolumeStats", NodeCap.GET_VOLUME_STATS)
_NO_STAGE = "; publish it without --staging-path"


async def make_dir(path: Path, flag: str) -> None:
    """The CO's part: the directory the driver is given must exist."""
    try:
        await anyio.Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise bad_usage(f"{flag} {path}: cannot make the directory: {exc.strerror}") from None


async def volume_context(session: Session, args: argparse.Namespace) -> dict[str, str]:
    """The --context given, else the volume's own (as a CO passes the PV's), else none."""
    if args.context is not None:
        return dict(args.context)
    try:
        found = await find_volume(session, args.id)
    except ClientError as exc:
        if exc.exit_code != 1:
            raise
        return {}  # the driver keeps no list, or not this volume: the call will tell
    return dict(found.volume.volume_context) if found.volume is not None else {}


async def stage(session: Session, args: argparse.Namespace) -> Output:
    await session.require(STAGE, _NO_STAGE)
    await make_dir(Path(args.staging_path), "--staging-path")
    request = csi.NodeStageVolumeRequest(
        volume_id=args.id,
        staging_target_path=args.staging_path,
        volume_capability=capability_of(args),
        publish_context=dict(args.publish_context),
        volume_context=await volume_context(session, args),
    )
    node = session.stubs.node
    await session.call(STAGE, lambda t: node.node_stage_volume(request, timeout=t))
    title = f"Volume {args.id} staged at {args.staging_path}"
    return Output(request_json(request), [Fields(title)])


async def unstage(session: Session, args: argparse.Namespace) -> Output:
    request = csi.NodeUnstageVolumeRequest(volume_id=args.id, staging_target_path=args.staging_path)
    node = session.stubs.node
    await session.call(UNSTAGE, lambda t: node.node_unstage_volume(request, timeout=t))
    title = f"Volume {args.id} unstaged from {args.staging_path}"
    return Output(request_json(request), [Fields(title)])


async def publish(session: Session, args: argparse.Namespace) -> Output:
    if args.staging_path is not None:
        await session.require(STAGE, _NO_STAGE)
    await make_dir(Path(args.target_path).parent, "--target-path")
    request = csi.NodePublishVolumeRequest(
        volume_id=args.id,
        staging_target_path=args.staging_path or "",
        target_path=args.target_path,
        volume_capability=capability_of(args),
        readonly=args.readonly,
        publish_context=dict(args.publish_context),
        volume_context=await volume_context(session, args),
    )
    node = session.stubs.node
    await session.call(PUBLISH, lambda t: node.node_publish_volume(request, timeout=t))
    title = f"Volume {args.id} published at {args.target_path}"
    if args.readonly:
        title += " (read-only)"
    return Output(request_json(request), [Fields(title)])


async def unpublish(session: Session, args: argparse.Namespace) -> Output:
    request = csi.NodeUnpublishVolumeRequest(volume_id=args.id, target_path=args.target_path)
    node = session.stubs.node
    await session.call(UNPUBLISH, lambda t: node.node_unpublish_volume(request, timeout=t))
    title = f"Volume {args.id} unpublished from {args.target_path}"
    return Output(request_json(request), [Fields(title)])


def _amount(unit: csi.VolumeUsageUnit, value: int) -> str:
    return human_size(value) if unit is csi.VolumeUsageUnit.BYTES else str(value)


async def stats(session: Session, args: argparse.Namespace) -> Output:
    request = csi.NodeGetVolumeStatsRequest(
        volume_id=args.id, volume_path=args.path, staging_target_path=args.staging_path or ""
    )
    node = session.stubs.node
    reply = await session.call(STATS, lambda t: node.node_get_volume_stats(request, timeout=t))
    usage = Table(f"Volume {args.id} at {args.path}", ("UNIT", "TOTAL", "USED", "AVAILABLE"))
    for item in reply.usage:
        usage.rows.append(
            (
                item.unit.name,
                _amount(item.unit, item.total),
                _amount(item.unit, item.used),
                _amount(item.unit, item.available),
            )
        )
    condition = Fields("Condition")
    if reply.volume_condition is None:
        condition.add("condition", "not reported (node capability VOLUME_CONDITION)")
    else:
        condition.add("abnormal", "yes" if reply.volume_condition.abnormal else "no")
        condition.add("message", reply.volume_condition.message or "-")
    return Output(message_json(reply), [usage, condition])


COMMANDS = {
    "stage": stage,
    "unstage": unstage,
    "publish": publish,
    "unpublish": unpublish,
    "stats": stats,
}
