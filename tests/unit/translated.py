"""Requests translated as the CSI services do, then checked as the engine does: what a
CSI call meets before anything is made."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiocsi.engine import policy
from aiocsi.services.validation import node as check

if TYPE_CHECKING:
    from pathlib import Path

    from aiocsi._proto.csi import v1 as csi
    from aiocsi.engine.requests import PublishVolume
    from aiocsi.models import Capability


def node_capability(
    message: csi.VolumeCapability | None, allowed: frozenset[str] = frozenset()
) -> Capability:
    """As at NodeStageVolume."""
    cap = check.node_capability(message)
    policy.capability(cap, "volume_capability", allowed)
    return cap


def publish(request: csi.NodePublishVolumeRequest, roots: tuple[Path, ...] = ()) -> PublishVolume:
    """As at NodePublishVolume."""
    published = check.publish(request, roots)
    policy.publish_request(published, frozenset())
    return published
