"""GroupController service: protobuf in, engine call, protobuf out."""

from __future__ import annotations

from aiocsi._proto.csi import v1 as csi
from aiocsi.engine.core import Engine
from aiocsi.services import convert
from aiocsi.services.validation import group_controller as check

Rpc = csi.GroupControllerServiceCapabilityRpcType


class GroupControllerService(csi.GroupControllerBase):
    def __init__(self, engine: Engine) -> None:
        self._groups = engine.groups

    async def group_controller_get_capabilities(
        self, message: csi.GroupControllerGetCapabilitiesRequest
    ) -> csi.GroupControllerGetCapabilitiesResponse:
        del message
        rpc = csi.GroupControllerServiceCapabilityRpc(
            type=Rpc.CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT
        )
        return csi.GroupControllerGetCapabilitiesResponse(
            capabilities=[csi.GroupControllerServiceCapability(rpc=rpc)]
        )

    async def create_volume_group_snapshot(
        self, message: csi.CreateVolumeGroupSnapshotRequest
    ) -> csi.CreateVolumeGroupSnapshotResponse:
        group = await self._groups.create(check.create(message))
        return csi.CreateVolumeGroupSnapshotResponse(group_snapshot=convert.group_snapshot(group))

    async def delete_volume_group_snapshot(
        self, message: csi.DeleteVolumeGroupSnapshotRequest
    ) -> csi.DeleteVolumeGroupSnapshotResponse:
        group_id = check.group_id(message.group_snapshot_id)
        await self._groups.delete(group_id, check.snapshot_ids(message))
        return csi.DeleteVolumeGroupSnapshotResponse()

    async def get_volume_group_snapshot(
        self, message: csi.GetVolumeGroupSnapshotRequest
    ) -> csi.GetVolumeGroupSnapshotResponse:
        group_id = check.group_id(message.group_snapshot_id)
        group = await self._groups.get(group_id, check.snapshot_ids(message))
        return csi.GetVolumeGroupSnapshotResponse(group_snapshot=convert.group_snapshot(group))
