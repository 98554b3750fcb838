"""Node service: protobuf in, engine call, protobuf out."""

from __future__ import annotations

from aiocsi._proto.csi import v1 as csi
from aiocsi.config import Config
from aiocsi.engine.core import Engine
from aiocsi.models import AccessType
from aiocsi.services import convert
from aiocsi.services.validation import common
from aiocsi.services.validation import node as check

Rpc = csi.NodeServiceCapabilityRpcType
NODE_CAPABILITIES = (
    Rpc.STAGE_UNSTAGE_VOLUME,
    Rpc.GET_VOLUME_STATS,
    Rpc.EXPAND_VOLUME,
    Rpc.VOLUME_CONDITION,
    Rpc.SINGLE_NODE_MULTI_WRITER,
    Rpc.VOLUME_MOUNT_GROUP,
)


class NodeService(csi.NodeBase):
    def __init__(self, config: Config, engine: Engine) -> None:
        self._config = config
        self._node = engine.node

    async def node_get_info(self, message: csi.NodeGetInfoRequest) -> csi.NodeGetInfoResponse:
        del message
        return csi.NodeGetInfoResponse(
            node_id=self._config.node_id,
            max_volumes_per_node=self._config.max_volumes_per_node,
            accessible_topology=convert.topology(self._config.node_id),
        )

    async def node_get_capabilities(
        self, message: csi.NodeGetCapabilitiesRequest
    ) -> csi.NodeGetCapabilitiesResponse:
        del message
        return csi.NodeGetCapabilitiesResponse(
            capabilities=[
                csi.NodeServiceCapability(rpc=csi.NodeServiceCapabilityRpc(type=rpc))
                for rpc in NODE_CAPABILITIES
            ]
        )

    async def node_stage_volume(
        self, message: csi.NodeStageVolumeRequest
    ) -> csi.NodeStageVolumeResponse:
        await self._node.stage(check.stage(message, self._config.allowed_path_roots))
        return csi.NodeStageVolumeResponse()

    async def node_unstage_volume(
        self, message: csi.NodeUnstageVolumeRequest
    ) -> csi.NodeUnstageVolumeResponse:
        volume_id = common.string(message.volume_id, "volume_id")
        staging = check.path(
            message.staging_target_path, "staging_target_path", self._config.allowed_path_roots
        )
        await self._node.unstage(volume_id, staging)
        return csi.NodeUnstageVolumeResponse()

    async def node_publish_volume(
        self, message: csi.NodePublishVolumeRequest
    ) -> csi.NodePublishVolumeResponse:
        await self._node.publish(check.publish(message, self._config.allowed_path_roots))
        return csi.NodePublishVolumeResponse()

    async def node_unpublish_volume(
        self, message: csi.NodeUnpublishVolumeRequest
    ) -> csi.NodeUnpublishVolumeResponse:
        volume_id = common.string(message.volume_id, "volume_id")
        target = check.path(message.target_path, "target_path", self._config.allowed_path_roots)
        await self._node.unpublish(volume_id, target)
        return csi.NodeUnpublishVolumeResponse()

    async def node_get_volume_stats(
        self, message: csi.NodeGetVolumeStatsRequest
    ) -> csi.NodeGetVolumeStatsResponse:
        volume_id = common.string(message.volume_id, "volume_id")
        path = check.lookup_path(message.volume_path, "volume_path")
        stats = await self._node.stats(volume_id, path)
        if stats.access_type is AccessType.BLOCK:
            usage = [csi.VolumeUsage(total=stats.size_bytes, unit=csi.VolumeUsageUnit.BYTES)]
        else:
            assert stats.fs is not None  # noqa: S101 - mount stats always carry fs figures
            usage = [
                csi.VolumeUsage(
                    available=stats.fs.available_bytes,
                    total=stats.fs.total_bytes,
                    used=stats.fs.used_bytes,
                    unit=csi.VolumeUsageUnit.BYTES,
                ),
                csi.VolumeUsage(
                    available=stats.fs.free_inodes,
                    total=stats.fs.total_inodes,
                    used=stats.fs.used_inodes,
                    unit=csi.VolumeUsageUnit.INODES,
                ),
            ]
        return csi.NodeGetVolumeStatsResponse(
            usage=usage, volume_condition=convert.condition(stats.condition)
        )

    async def node_expand_volume(
        self, message: csi.NodeExpandVolumeRequest
    ) -> csi.NodeExpandVolumeResponse:
        volume_id = common.string(message.volume_id, "volume_id")
        path = check.lookup_path(message.volume_path, "volume_path")
        # capacity_range is optional: without one the filesystem grows to fill the device.
        capability = (
            check.node_capability(message.volume_capability)
            if message.volume_capability is not None
            else None
        )
        size = await self._node.expand(
            volume_id, path, common.capacity(message.capacity_range), capability
        )
        return csi.NodeExpandVolumeResponse(capacity_bytes=size)
