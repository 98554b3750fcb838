"""`aiocsi volume create|list|get|delete|expand|attach|detach`: the Controller side."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, TypeVar

from aiocsi._proto.csi import v1 as csi
from aiocsi.client.cli.render import Fields, Json, Output, Table, message_json, pairs
from aiocsi.client.cli.session import (
    CONTROLLER,
    NODE,
    ClientError,
    Ctrl,
    NodeCap,
    PartialFailure,
    Rpc,
    Session,
    bad_usage,
    follow_pages,
    refused,
)
from aiocsi.client.codes import BadResponse
from aiocsi.client.requests import AccessMode, content_source, topology_requirement
from aiocsi.client.requests import volume_capability as build_capability
from aiocsi.client.sizes import human_size

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable

    import betterproto2

R = TypeVar("R", bound="betterproto2.Message")
CREATE = Rpc(CONTROLLER, "CreateVolume", Ctrl.CREATE_DELETE_VOLUME)
CLONE = Rpc(CONTROLLER, "CreateVolume from a volume", Ctrl.CLONE_VOLUME)
DELETE = Rpc(CONTROLLER, "DeleteVolume", Ctrl.CREATE_DELETE_VOLUME)
LIST = Rpc(CONTROLLER, "ListVolumes", Ctrl.LIST_VOLUMES)
GET = Rpc(CONTROLLER, "ControllerGetVolume", Ctrl.GET_VOLUME)
EXPAND = Rpc(CONTROLLER, "ControllerExpandVolume", Ctrl.EXPAND_VOLUME)
NODE_EXPAND = Rpc(NODE, "NodeExpandVolume", NodeCap.EXPAND_VOLUME)
ATTACH = Rpc(CONTROLLER, "ControllerPublishVolume", Ctrl.PUBLISH_UNPUBLISH_VOLUME)
DETACH = Rpc(CONTROLLER, "ControllerUnpublishVolume", Ctrl.PUBLISH_UNPUBLISH_VOLUME)


def capability_of(args: argparse.Namespace) -> csi.VolumeCapability:
    if args.block and (args.fs_type or args.mount_flag):
        raise bad_usage("--block volumes have no --fs-type or --mount-flag")
    return build_capability(
        block=args.block,
        fs_type=args.fs_type,
        mode=AccessMode.from_string(args.access_mode),
        mount_flags=args.mount_flag,
    )


def request_json(request: betterproto2.Message) -> dict[str, Json]:
    """What was asked, for calls whose reply is empty; secrets are never printed."""
    document = message_json(request)
    document.pop("secrets", None)
    return document


def volume_fields(title: str, volume: csi.Volume) -> Fields:
    fields = Fields(title).add("id", volume.volume_id)
    fields.add("size", human_size(volume.capacity_bytes) if volume.capacity_bytes else "unknown")
    fields.add("context", pairs(volume.volume_context))
    topology = [pairs(t.segments) for t in volume.accessible_topology]
    fields.add("topology", "; ".join(topology) or "-")
    source = volume.content_source
    if source is not None and source.snapshot is not None:
        fields.add("restored from", f"snapshot {source.snapshot.snapshot_id}")
    if source is not None and source.volume is not None:
        fields.add("cloned from", f"volume {source.volume.volume_id}")
    return fields


def _condition(condition: csi.VolumeCondition | None) -> str:
    if condition is None:
        return "-"
    state = "ABNORMAL" if condition.abnormal else "ok"
    return f"{state}: {condition.message}" if condition.message else state


def status_fields(
    fields: Fields,
    status: csi.ListVolumesResponseVolumeStatus | csi.ControllerGetVolumeResponseVolumeStatus,
) -> Fields:
    fields.add("published on", ", ".join(status.published_node_ids) or "-")
    return fields.add("condition", _condition(status.volume_condition))


async def create(session: Session, args: argparse.Namespace) -> Output:
    if args.from_volume is not None:
        await session.require(CLONE)
    request = csi.CreateVolumeRequest(
        name=args.name,
        capacity_range=None if args.size is None else csi.CapacityRange(required_bytes=args.size),
        volume_capabilities=[capability_of(args)],
        parameters=dict(args.param),
        volume_content_source=content_source(
            snapshot_id=args.from_snapshot, volume_id=args.from_volume
        ),
        accessibility_requirements=topology_requirement(dict(args.topology)),
    )
    controller = session.stubs.controller
    reply = await session.call(CREATE, lambda t: controller.create_volume(request, timeout=t))
    if reply.volume is None or not reply.volume.volume_id:
        raise BadResponse(f"CreateVolume for {args.name} answered OK without a volume id")
    return Output(message_json(reply), [volume_fields(f"Volume {args.name}", reply.volume)])


async def list_entries(
    session: Session, start: str = "", max_entries: int | None = None
) -> tuple[list[csi.ListVolumesResponseEntry], str]:
    controller = session.stubs.controller

    async def page(token: str) -> tuple[list[csi.ListVolumesResponseEntry], str]:
        request = csi.ListVolumesRequest(max_entries=max_entries or 0, starting_token=token)
        reply = await session.call(LIST, lambda t: controller.list_volumes(request, timeout=t))
        return list(reply.entries), reply.next_token

    return await follow_pages(page, start, one_page=max_entries is not None)


async def list_volumes(session: Session, args: argparse.Namespace) -> Output:
    entries, token = await list_entries(session, args.starting_token, args.max_entries)
    document: Json = {
        "entries": [message_json(e) for e in entries],
        "next_token": token,
    }
    table = Table("Volumes", ("VOLUME ID", "SIZE", "PUBLISHED ON", "CONDITION"))
    for entry in entries:
        volume, status = entry.volume or csi.Volume(), entry.status
        table.rows.append(
            (
                volume.volume_id,
                human_size(volume.capacity_bytes) if volume.capacity_bytes else "-",
                ", ".join(status.published_node_ids) or "-" if status is not None else "-",
                _condition(status.volume_condition) if status is not None else "-",
            )
        )
    blocks: list[Fields | Table] = [table]
    if token:
        blocks.append(Fields("More").add("next page", f"--starting-token {token}"))
    return Output(document, blocks)


async def find_volume(
    session: Session, volume_id: str
) -> csi.ControllerGetVolumeResponse | csi.ListVolumesResponseEntry:
    """ControllerGetVolume where the driver offers it, else the volume's ListVolumes entry."""
    if await session.offers(GET) is True:
        request = csi.ControllerGetVolumeRequest(volume_id=volume_id)
        controller = session.stubs.controller
        return await session.call(
            GET, lambda t: controller.controller_get_volume(request, timeout=t)
        )
    if await session.offers(LIST) is False:
        raise refused(
            "UNIMPLEMENTED",
            "the driver offers neither ControllerGetVolume (controller capability GET_VOLUME) "
            "nor ListVolumes (LIST_VOLUMES), so `aiocsi volume get` cannot ask about a volume",
        )
    entries, _ = await list_entries(session)
    for entry in entries:
        if entry.volume is not None and entry.volume.volume_id == volume_id:
            return entry
    raise refused("NOT_FOUND", f"ListVolumes has no volume {volume_id}")


async def get(session: Session, args: argparse.Namespace) -> Output:
    found = await find_volume(session, args.id)
    fields = volume_fields(f"Volume {args.id}", found.volume or csi.Volume())
    if found.status is not None:
        status_fields(fields, found.status)
    return Output(message_json(found), [fields])


async def delete_each(
    session: Session,
    ids: list[str],
    what: str,
    rpc: Rpc,
    *,
    request_of: Callable[[str], R],
    send: Callable[[R, float], Awaitable[object]],
) -> Output:
    """One delete per id; a refusal is reported and the rest still run (exit 1 at the end)."""
    done: list[Json] = []
    table = Table(f"Deleted {what}", ("ID",), empty="nothing")
    failed = 0
    for one in ids:
        request = request_of(one)
        try:
            await session.call(rpc, functools.partial(send, request))
            done.append(request_json(request))
        except ClientError as exc:
            if exc.exit_code != 1:
                raise
            session.report(exc)
            failed = exc.exit_code
            continue
        table.rows.append((one,))
    output = Output({"deleted": done}, [table])
    if failed:
        raise PartialFailure(failed, output)
    return output


async def delete(session: Session, args: argparse.Namespace) -> Output:
    controller = session.stubs.controller
    return await delete_each(
        session,
        args.id,
        "volumes",
        DELETE,
        request_of=lambda volume_id: csi.DeleteVolumeRequest(volume_id=volume_id),
        send=lambda request, t: controller.delete_volume(request, timeout=t),
    )


async def _controller_expand(
    session: Session, args: argparse.Namespace, capability: csi.VolumeCapability
) -> csi.ControllerExpandVolumeResponse | None:
    request = csi.ControllerExpandVolumeRequest(
        volume_id=args.id,
        capacity_range=csi.CapacityRange(required_bytes=args.size),
        volume_capability=capability,
    )
    controller = session.stubs.controller
    try:
        await session.require(EXPAND, "; give --path to grow it on its node (NodeExpandVolume)")
        return await session.call(
            EXPAND, lambda t: controller.controller_expand_volume(request, timeout=t)
        )
    except ClientError as exc:
        if exc.code != "UNIMPLEMENTED" or args.path is None:
            raise
        return None


async def expand(session: Session, args: argparse.Namespace) -> Output:
    capability = capability_of(args)
    grown = await _controller_expand(session, args, capability)
    fields = Fields(f"Volume {args.id}")
    if grown is not None:
        fields.add("size", human_size(grown.capacity_bytes))
        fields.add("node expansion", "required" if grown.node_expansion_required else "no")
    node_grown = None
    if args.path is not None:
        request = csi.NodeExpandVolumeRequest(
            volume_id=args.id,
            volume_path=args.path,
            capacity_range=csi.CapacityRange(required_bytes=args.size),
            staging_target_path=args.staging_path or "",
            volume_capability=capability,
        )
        node = session.stubs.node
        node_grown = await session.call(
            NODE_EXPAND, lambda t: node.node_expand_volume(request, timeout=t)
        )
        fields.add("size on the node", human_size(node_grown.capacity_bytes))
    elif grown is not None and grown.node_expansion_required:
        fields.add("next", f"aiocsi volume expand {args.id} --size {args.size} --path PATH")
    document: Json = {
        "controller": None if grown is None else message_json(grown),
        "node": None if node_grown is None else message_json(node_grown),
    }
    return Output(document, [fields])


async def attach(session: Session, args: argparse.Namespace) -> Output:
    request = csi.ControllerPublishVolumeRequest(
        volume_id=args.id,
        node_id=args.node,
        volume_capability=capability_of(args),
        readonly=args.readonly,
        volume_context=dict(args.context or ()),
    )
    controller = session.stubs.controller
    reply = await session.call(
        ATTACH, lambda t: controller.controller_publish_volume(request, timeout=t)
    )
    fields = Fields(f"Volume {args.id} attached to {args.node}")
    fields.add("publish context", pairs(reply.publish_context))
    return Output(message_json(reply), [fields])


async def detach(session: Session, args: argparse.Namespace) -> Output:
    request = csi.ControllerUnpublishVolumeRequest(volume_id=args.id, node_id=args.node)
    controller = session.stubs.controller
    await session.call(DETACH, lambda t: controller.controller_unpublish_volume(request, timeout=t))
    return Output(request_json(request), [Fields(f"Volume {args.id} detached from {args.node}")])


COMMANDS = {
    "create": create,
    "list": list_volumes,
    "get": get,
    "delete": delete,
    "expand": expand,
    "attach": attach,
    "detach": detach,
}
