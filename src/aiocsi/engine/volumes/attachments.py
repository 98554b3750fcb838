"""ControllerPublishVolume and ControllerUnpublishVolume: records of which node a volume
is attached to."""

from __future__ import annotations

from aiocsi.engine import policy
from aiocsi.engine.operations import OperationKey
from aiocsi.engine.pool import is_volume_id
from aiocsi.engine.volumes.lookups import VolumeLookups
from aiocsi.errors import AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted
from aiocsi.logging import get_logger
from aiocsi.models import Capability, Publication, PublicationKind

log = get_logger("aiocsi.engine")


class ControllerAttachments(VolumeLookups):
    """Attach records."""

    async def controller_publish(
        self, volume_id: str, node_id: str, capability: Capability, read_only: bool
    ) -> None:
        policy.capabilities((capability,), "volume_capability", self._allowed_flags)
        self.get(volume_id)
        if node_id != self._ctx.config.node_id:
            raise NotFound(f"node {node_id!r} is not served by this driver")
        await self._ctx.operations.run(
            OperationKey.volume(volume_id),
            ("publish", node_id, capability, read_only),
            "ControllerPublishVolume",
            lambda: self._controller_publish(volume_id, node_id, capability, read_only),
        )

    async def _controller_publish(
        self, volume_id: str, node_id: str, capability: Capability, read_only: bool
    ) -> None:
        volume = self.get(volume_id)
        attached = self._store.publications(volume.id, PublicationKind.CONTROLLER)
        for pub in attached:
            if pub.node_id != node_id:
                raise FailedPrecondition(
                    f"volume {volume.id} is single-node and already published to {pub.node_id}"
                )
            if pub.capability != capability or pub.read_only != read_only:
                raise AlreadyExists(
                    f"volume {volume.id} is already published to {node_id} with a different "
                    "capability or read-only flag"
                )
            return
        limit = self._ctx.config.max_volumes_per_node
        if limit:
            on_node = self._store.publications(kind=PublicationKind.CONTROLLER)
            if len({p.volume_id for p in on_node if p.node_id == node_id}) >= limit:
                raise ResourceExhausted(f"node {node_id} already holds {limit} volumes")
        await self._store.add_publication(
            Publication(
                volume.id, PublicationKind.CONTROLLER, node_id, node_id, read_only, capability
            )
        )
        log.info("volume_controller_published", volume_id=volume.id, node_id=node_id)

    async def controller_unpublish(self, volume_id: str, node_id: str) -> None:
        if not is_volume_id(volume_id):
            return
        await self._ctx.operations.run(
            OperationKey.volume(volume_id),
            ("unpublish", node_id),
            "ControllerUnpublishVolume",
            lambda: self._controller_unpublish(volume_id, node_id),
        )

    async def _controller_unpublish(self, volume_id: str, node_id: str) -> None:
        for pub in self._store.publications(volume_id, PublicationKind.CONTROLLER):
            if not node_id or pub.node_id == node_id:
                await self._store.remove_publication(
                    volume_id, PublicationKind.CONTROLLER, pub.path
                )
