"""Controller service: protobuf in, engine call, protobuf out."""

from __future__ import annotations

from aiocsi._proto.csi import v1 as csi
from aiocsi.config import Config
from aiocsi.engine.core import Engine
from aiocsi.errors import InvalidArgument, Unimplemented
from aiocsi.models import Volume
from aiocsi.services import convert
from aiocsi.services.pages import KeptEntries
from aiocsi.services.validation import common
from aiocsi.services.validation import controller as check

Rpc = csi.ControllerServiceCapabilityRpcType


def controller_capabilities(config: Config) -> list[Rpc]:
    rpcs = [
        Rpc.CREATE_DELETE_VOLUME,
        Rpc.LIST_VOLUMES,
        Rpc.GET_CAPACITY,
        Rpc.CREATE_DELETE_SNAPSHOT,
        Rpc.LIST_SNAPSHOTS,
        Rpc.CLONE_VOLUME,
        Rpc.LIST_VOLUMES_PUBLISHED_NODES,
        Rpc.VOLUME_CONDITION,
        Rpc.GET_VOLUME,
        Rpc.SINGLE_NODE_MULTI_WRITER,
        Rpc.MODIFY_VOLUME,
        Rpc.GET_SNAPSHOT,
    ]
    if config.enable_attach:
        rpcs += [Rpc.PUBLISH_UNPUBLISH_VOLUME, Rpc.PUBLISH_READONLY]
    if config.controller_expand:
        rpcs.append(Rpc.EXPAND_VOLUME)
    return rpcs


class ControllerService(csi.ControllerBase):
    def __init__(self, config: Config, engine: Engine) -> None:
        self._config = config
        self._volumes = engine.volumes
        self._snapshots = engine.snapshots
        self._kept = KeptEntries()

    async def controller_get_capabilities(
        self, message: csi.ControllerGetCapabilitiesRequest
    ) -> csi.ControllerGetCapabilitiesResponse:
        del message
        return csi.ControllerGetCapabilitiesResponse(
            capabilities=[
                csi.ControllerServiceCapability(rpc=csi.ControllerServiceCapabilityRpc(type=rpc))
                for rpc in controller_capabilities(self._config)
            ]
        )

    async def create_volume(self, message: csi.CreateVolumeRequest) -> csi.CreateVolumeResponse:
        volume = await self._volumes.create(check.create_volume(message))
        return csi.CreateVolumeResponse(volume=convert.volume(volume))

    async def delete_volume(self, message: csi.DeleteVolumeRequest) -> csi.DeleteVolumeResponse:
        common.string_map(message.secrets, "secrets")
        await self._volumes.delete(check.volume_id(message.volume_id))
        return csi.DeleteVolumeResponse()

    async def validate_volume_capabilities(
        self, message: csi.ValidateVolumeCapabilitiesRequest
    ) -> csi.ValidateVolumeCapabilitiesResponse:
        volume_id = check.volume_id(message.volume_id)
        if not message.volume_capabilities:
            raise InvalidArgument("volume_capabilities is required")
        common.string_map(message.secrets, "secrets")
        common.string_map(message.volume_context, "volume_context")
        volume = self._volumes.get(volume_id)
        if (why := self._unconfirmed(volume, message)) is not None:
            return csi.ValidateVolumeCapabilitiesResponse(message=why)
        return csi.ValidateVolumeCapabilitiesResponse(
            confirmed=csi.ValidateVolumeCapabilitiesResponseConfirmed(
                volume_context=message.volume_context,
                volume_capabilities=message.volume_capabilities,
                parameters=message.parameters,
                mutable_parameters=message.mutable_parameters,
            )
        )

    async def controller_get_volume(
        self, message: csi.ControllerGetVolumeRequest
    ) -> csi.ControllerGetVolumeResponse:
        volume = self._volumes.get(check.volume_id(message.volume_id))
        return csi.ControllerGetVolumeResponse(
            volume=convert.volume(volume),
            status=csi.ControllerGetVolumeResponseVolumeStatus(
                published_node_ids=self._volumes.published_nodes(volume.id),
                volume_condition=convert.condition(await self._volumes.condition(volume)),
            ),
        )

    async def list_volumes(self, message: csi.ListVolumesRequest) -> csi.ListVolumesResponse:
        after, limit = check.page(message.max_entries, message.starting_token)
        page = await self._volumes.list(after, limit)
        conditions = await self._volumes.conditions(page.entries)
        nodes = [self._volumes.published_nodes(v.id) for v in page.entries]
        shown = list(zip(page.entries, nodes, conditions, strict=True))
        entries = [convert.volume_entry(*row) for row in shown]
        keys = [convert.volume_entry_key(*row) for row in shown]
        return await self._kept.reply(csi.ListVolumesResponse, entries, keys, page.next_token)

    async def get_capacity(self, message: csi.GetCapacityRequest) -> csi.GetCapacityResponse:
        caps = (
            check.volume_capabilities(message.volume_capabilities)
            if message.volume_capabilities
            else ()
        )
        segments = message.accessible_topology.segments if message.accessible_topology else None
        available, minimum = await self._volumes.capacity(
            segments, caps, check.parameters(message.parameters)
        )
        return csi.GetCapacityResponse(
            available_capacity=available,
            maximum_volume_size=available,
            minimum_volume_size=minimum,
        )

    async def controller_expand_volume(
        self, message: csi.ControllerExpandVolumeRequest
    ) -> csi.ControllerExpandVolumeResponse:
        if not self._config.controller_expand:
            raise Unimplemented("ControllerExpandVolume is off (--controller-expand false)")
        volume_id = check.volume_id(message.volume_id)
        if message.capacity_range is None:
            raise InvalidArgument("capacity_range is required")
        capacity = common.capacity(message.capacity_range)
        common.string_map(message.secrets, "secrets")
        capability = (
            common.capability(message.volume_capability, "volume_capability")
            if message.volume_capability is not None
            else None
        )
        size, _ = await self._volumes.expand(volume_id, capacity, capability)
        return csi.ControllerExpandVolumeResponse(
            capacity_bytes=size,
            node_expansion_required=self._volumes.needs_node_expansion(volume_id, capability),
        )

    async def controller_modify_volume(
        self, message: csi.ControllerModifyVolumeRequest
    ) -> csi.ControllerModifyVolumeResponse:
        volume_id = check.volume_id(message.volume_id)
        common.string_map(message.secrets, "secrets")
        mutable = check.parameters(message.mutable_parameters, "mutable_parameters")
        await self._volumes.modify(volume_id, mutable)
        return csi.ControllerModifyVolumeResponse()

    async def controller_publish_volume(
        self, message: csi.ControllerPublishVolumeRequest
    ) -> csi.ControllerPublishVolumeResponse:
        if not self._config.enable_attach:
            raise Unimplemented("ControllerPublishVolume needs --enable-attach")
        volume_id = check.volume_id(message.volume_id)
        node_id = check.node_id(message.node_id)
        capability = check.volume_capabilities(
            [message.volume_capability] if message.volume_capability else [], "volume_capability"
        )[0]
        common.string_map(message.secrets, "secrets")
        common.string_map(message.volume_context, "volume_context")
        await self._volumes.controller_publish(volume_id, node_id, capability, message.readonly)
        return csi.ControllerPublishVolumeResponse()

    async def controller_unpublish_volume(
        self, message: csi.ControllerUnpublishVolumeRequest
    ) -> csi.ControllerUnpublishVolumeResponse:
        if not self._config.enable_attach:
            raise Unimplemented("ControllerUnpublishVolume needs --enable-attach")
        await self._volumes.controller_unpublish(
            check.volume_id(message.volume_id),
            common.string(message.node_id, "node_id", required=False),
        )
        return csi.ControllerUnpublishVolumeResponse()

    def _unconfirmed(
        self, volume: Volume, message: csi.ValidateVolumeCapabilitiesRequest
    ) -> str | None:
        """Why `volume` cannot serve what `message` asks, or None when it can."""
        try:
            caps = check.volume_capabilities(message.volume_capabilities)
            params = check.parameters(message.parameters)
            mutable = check.parameters(message.mutable_parameters, "mutable_parameters")
        except InvalidArgument as exc:
            return str(exc)
        return self._volumes.why_unsupported(volume, caps, params, mutable)

    async def create_snapshot(
        self, message: csi.CreateSnapshotRequest
    ) -> csi.CreateSnapshotResponse:
        name = common.string(message.name, "name")
        source = common.string(message.source_volume_id, "source_volume_id")
        parameters = check.parameters(message.parameters)
        common.string_map(message.secrets, "secrets")
        snap = await self._snapshots.create(name, source, parameters)
        return csi.CreateSnapshotResponse(snapshot=convert.snapshot(snap))

    async def delete_snapshot(
        self, message: csi.DeleteSnapshotRequest
    ) -> csi.DeleteSnapshotResponse:
        await self._snapshots.delete(common.string(message.snapshot_id, "snapshot_id"))
        return csi.DeleteSnapshotResponse()

    async def get_snapshot(self, message: csi.GetSnapshotRequest) -> csi.GetSnapshotResponse:
        snap = await self._snapshots.get(common.string(message.snapshot_id, "snapshot_id"))
        return csi.GetSnapshotResponse(snapshot=convert.snapshot(snap))

    async def list_snapshots(self, message: csi.ListSnapshotsRequest) -> csi.ListSnapshotsResponse:
        after, limit = check.page(message.max_entries, message.starting_token)
        source = common.string(message.source_volume_id, "source_volume_id", required=False)
        snapshot_id = common.string(message.snapshot_id, "snapshot_id", required=False)
        page = await self._snapshots.list(
            after, limit, source_volume_id=source, snapshot_id=snapshot_id
        )
        entries = [
            csi.ListSnapshotsResponseEntry(snapshot=convert.snapshot(s)) for s in page.entries
        ]
        keys = [convert.snapshot_key(s) for s in page.entries]
        return await self._kept.reply(csi.ListSnapshotsResponse, entries, keys, page.next_token)
