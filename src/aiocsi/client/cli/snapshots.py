"""`aiocsi snapshot create|list|get|delete` and `aiocsi capacity`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiocsi._proto.csi import v1 as csi
from aiocsi.client.cli.render import Fields, Json, Output, Table, message_json, pairs
from aiocsi.client.cli.session import CONTROLLER, Ctrl, Rpc, Session, follow_pages, refused
from aiocsi.client.cli.volumes import capability_of, delete_each
from aiocsi.client.codes import BadResponse
from aiocsi.client.sizes import human_size

if TYPE_CHECKING:
    import argparse

CREATE = Rpc(CONTROLLER, "CreateSnapshot", Ctrl.CREATE_DELETE_SNAPSHOT)
DELETE = Rpc(CONTROLLER, "DeleteSnapshot", Ctrl.CREATE_DELETE_SNAPSHOT)
LIST = Rpc(CONTROLLER, "ListSnapshots", Ctrl.LIST_SNAPSHOTS)
GET = Rpc(CONTROLLER, "GetSnapshot", Ctrl.GET_SNAPSHOT)
CAPACITY = Rpc(CONTROLLER, "GetCapacity", Ctrl.GET_CAPACITY)


def _when(snapshot: csi.Snapshot) -> str:
    created = snapshot.creation_time
    return "-" if created is None else created.strftime("%Y-%m-%d %H:%M:%S UTC")


def snapshot_fields(title: str, snapshot: csi.Snapshot) -> Fields:
    fields = Fields(title).add("id", snapshot.snapshot_id)
    fields.add("source volume", snapshot.source_volume_id)
    fields.add("size", human_size(snapshot.size_bytes) if snapshot.size_bytes else "unknown")
    fields.add("created", _when(snapshot))
    return fields.add("ready", "yes" if snapshot.ready_to_use else "no")


async def create(session: Session, args: argparse.Namespace) -> Output:
    request = csi.CreateSnapshotRequest(
        source_volume_id=args.source, name=args.name, parameters=dict(args.param)
    )
    controller = session.stubs.controller
    reply = await session.call(CREATE, lambda t: controller.create_snapshot(request, timeout=t))
    if reply.snapshot is None or not reply.snapshot.snapshot_id:
        raise BadResponse(f"CreateSnapshot for {args.name} answered OK without a snapshot id")
    return Output(message_json(reply), [snapshot_fields(f"Snapshot {args.name}", reply.snapshot)])


async def _entries(
    session: Session,
    *,
    source: str = "",
    snapshot_id: str = "",
    start: str = "",
    max_entries: int | None = None,
) -> tuple[list[csi.ListSnapshotsResponseEntry], str]:
    controller = session.stubs.controller

    async def page(token: str) -> tuple[list[csi.ListSnapshotsResponseEntry], str]:
        request = csi.ListSnapshotsRequest(
            max_entries=max_entries or 0,
            starting_token=token,
            source_volume_id=source,
            snapshot_id=snapshot_id,
        )
        reply = await session.call(LIST, lambda t: controller.list_snapshots(request, timeout=t))
        return list(reply.entries), reply.next_token

    return await follow_pages(page, start, one_page=max_entries is not None)


async def list_snapshots(session: Session, args: argparse.Namespace) -> Output:
    entries, token = await _entries(
        session, source=args.source or "", start=args.starting_token, max_entries=args.max_entries
    )
    document: Json = {"entries": [message_json(e) for e in entries], "next_token": token}
    table = Table("Snapshots", ("SNAPSHOT ID", "SOURCE VOLUME", "SIZE", "CREATED", "READY"))
    for entry in entries:
        snap = entry.snapshot or csi.Snapshot()
        size = human_size(snap.size_bytes) if snap.size_bytes else "-"
        ready = "yes" if snap.ready_to_use else "no"
        table.rows.append((snap.snapshot_id, snap.source_volume_id, size, _when(snap), ready))
    blocks: list[Fields | Table] = [table]
    if token:
        blocks.append(Fields("More").add("next page", f"--starting-token {token}"))
    return Output(document, blocks)


async def get(session: Session, args: argparse.Namespace) -> Output:
    """GetSnapshot where the driver offers it, else the snapshot's ListSnapshots entry."""
    if await session.offers(GET) is True:
        request = csi.GetSnapshotRequest(snapshot_id=args.id)
        controller = session.stubs.controller
        found = await session.call(GET, lambda t: controller.get_snapshot(request, timeout=t))
        snapshot = found.snapshot
    else:
        entries, _ = await _entries(session, snapshot_id=args.id)
        snapshot = next(
            (e.snapshot for e in entries if e.snapshot and e.snapshot.snapshot_id == args.id),
            None,
        )
    if snapshot is None:
        raise refused("NOT_FOUND", f"the driver knows no snapshot {args.id}")
    document: Json = {"snapshot": message_json(snapshot)}
    return Output(document, [snapshot_fields(f"Snapshot {args.id}", snapshot)])


async def delete(session: Session, args: argparse.Namespace) -> Output:
    controller = session.stubs.controller
    return await delete_each(
        session,
        args.id,
        "snapshots",
        DELETE,
        request_of=lambda snapshot_id: csi.DeleteSnapshotRequest(snapshot_id=snapshot_id),
        send=lambda request, t: controller.delete_snapshot(request, timeout=t),
    )


async def capacity(session: Session, args: argparse.Namespace) -> Output:
    asked = args.block or args.fs_type or args.mount_flag
    request = csi.GetCapacityRequest(
        volume_capabilities=[capability_of(args)] if asked else [],
        parameters=dict(args.param),
        accessible_topology=csi.Topology(segments=dict(args.topology)) if args.topology else None,
    )
    controller = session.stubs.controller
    reply = await session.call(CAPACITY, lambda t: controller.get_capacity(request, timeout=t))
    fields = Fields("Capacity" + (f" in {pairs(dict(args.topology))}" if args.topology else ""))
    fields.add("available", human_size(reply.available_capacity))
    if reply.maximum_volume_size is not None:
        fields.add("largest volume", human_size(reply.maximum_volume_size))
    if reply.minimum_volume_size is not None:
        fields.add("smallest volume", human_size(reply.minimum_volume_size))
    return Output(message_json(reply), [fields])


COMMANDS = {"create": create, "list": list_snapshots, "get": get, "delete": delete}
