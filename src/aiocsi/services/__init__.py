"""The CSI services: thin translations between protobuf and the engine."""

from __future__ import annotations

from grpclib._typing import IServable

from aiocsi._proto.csi import v1 as csi
from aiocsi.config import Config
from aiocsi.engine.core import Engine
from aiocsi.services.controller import ControllerService
from aiocsi.services.group_controller import GroupControllerService
from aiocsi.services.identity import IdentityService
from aiocsi.services.node import NodeService
from aiocsi.services.snapshot_metadata import SnapshotMetadataService


def build_services(config: Config, engine: Engine) -> list[IServable]:
    """Every CSI service, with the ones the mode does not serve answering UNIMPLEMENTED.

    Registering the generated bases (rather than nothing) keeps those answers well-formed
    gRPC responses that pass through the interceptor, so they are logged like any call.
    """
    controller = (
        ControllerService(config, engine) if config.mode.serves_controller else csi.ControllerBase()
    )
    node = NodeService(config, engine) if config.mode.serves_node else csi.NodeBase()
    groups = (
        GroupControllerService(engine)
        if config.mode.serves_controller
        else csi.GroupControllerBase()
    )
    return [
        IdentityService(config, engine.health),
        controller,
        node,
        groups,
        SnapshotMetadataService(engine)
        if config.mode.serves_controller
        else csi.SnapshotMetadataBase(),
    ]
