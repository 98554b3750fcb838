"""The CSI services: thin translations between protobuf and the engine."""

from __future__ import annotations

from aiocsi.config import Config
from aiocsi.engine.core import Engine
from aiocsi.services.controller import ControllerService
from aiocsi.services.identity import IdentityService
from aiocsi.services.node import NodeService


def build_services(config: Config, engine: Engine) -> list[object]:
    """The services the configured mode serves (the spec requires a plugin to know its mode)."""
    services: list[object] = [IdentityService(config, engine.health)]
    if config.mode.serves_controller:
        services.append(ControllerService(config, engine))
    if config.mode.serves_node:
        services.append(NodeService(config, engine))
    return services
