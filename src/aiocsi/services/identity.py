"""Identity service: who we are, what we can do, whether we are ready."""

from __future__ import annotations

import os

from aiocsi import __version__
from aiocsi._proto.csi import v1 as csi
from aiocsi.config import Config
from aiocsi.engine.health import HealthChecker
from aiocsi.logging import get_logger
from aiocsi.services.pages import encoded_once

log = get_logger("aiocsi.identity")
# Probe's two possible answers, made and encoded once: building and encoding a fresh
# message was a visible part of the cheapest call (issue 16). grpclib only reads them.
_PROBE_ANSWERS = {ready: encoded_once(csi.ProbeResponse(ready=ready)) for ready in (True, False)}
Service = csi.PluginCapabilityServiceType


def plugin_capabilities(config: Config) -> list[csi.PluginCapability]:
    caps = [
        csi.PluginCapability(
            service=csi.PluginCapabilityService(type=Service.VOLUME_ACCESSIBILITY_CONSTRAINTS)
        ),
        csi.PluginCapability(
            volume_expansion=csi.PluginCapabilityVolumeExpansion(
                type=csi.PluginCapabilityVolumeExpansionType.ONLINE
            )
        ),
    ]
    if config.mode.serves_controller:
        caps[:0] = [
            csi.PluginCapability(service=csi.PluginCapabilityService(type=service))
            for service in (Service.CONTROLLER_SERVICE, Service.GROUP_CONTROLLER_SERVICE)
        ]
        caps.append(
            csi.PluginCapability(
                service=csi.PluginCapabilityService(type=Service.SNAPSHOT_METADATA_SERVICE)
            )
        )
    return caps


class IdentityService(csi.IdentityBase):
    def __init__(self, config: Config, health: HealthChecker) -> None:
        self._config = config
        self._health = health
        self._manifest = {"mode": config.mode.value}
        commit = os.environ.get("AIOCSI_GIT_COMMIT", "")
        if commit:
            self._manifest["commit"] = commit

    async def get_plugin_info(self, message: csi.GetPluginInfoRequest) -> csi.GetPluginInfoResponse:
        del message
        return csi.GetPluginInfoResponse(
            name=self._config.driver_name, vendor_version=__version__, manifest=self._manifest
        )

    async def get_plugin_capabilities(
        self, message: csi.GetPluginCapabilitiesRequest
    ) -> csi.GetPluginCapabilitiesResponse:
        del message
        return csi.GetPluginCapabilitiesResponse(capabilities=plugin_capabilities(self._config))

    async def probe(self, message: csi.ProbeRequest) -> csi.ProbeResponse:
        del message
        report = await self._health.check()
        if not report.ready:
            log.warning("probe_not_ready", problems=list(report.problems))
        return _PROBE_ANSWERS[report.ready]
