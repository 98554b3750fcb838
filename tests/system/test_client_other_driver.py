"""The client against a driver that is not aiocsi: a minimal CSI server written here with
grpclib and the generated stubs, offering only Identity, CreateVolume, DeleteVolume and
ListVolumes (two entries a page, whatever the caller asks). The client must work with
what it has and name what it lacks."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from aiocsi._proto.csi import v1 as csi

from .client_cli import aiocsi

GiB = 1024**3
PAGE = 2


class MinimalIdentity(csi.IdentityBase):
    async def get_plugin_info(self, message: csi.GetPluginInfoRequest) -> csi.GetPluginInfoResponse:
        del message  # the generated signature; nothing to read
        return csi.GetPluginInfoResponse(name="minimal.test.example", vendor_version="9.9")

    async def get_plugin_capabilities(
        self, message: csi.GetPluginCapabilitiesRequest
    ) -> csi.GetPluginCapabilitiesResponse:
        del message
        service = csi.PluginCapabilityService(
            type=csi.PluginCapabilityServiceType.CONTROLLER_SERVICE
        )
        return csi.GetPluginCapabilitiesResponse(
            capabilities=[csi.PluginCapability(service=service)]
        )

    async def probe(self, message: csi.ProbeRequest) -> csi.ProbeResponse:
        del message
        return csi.ProbeResponse()


class MinimalController(csi.ControllerBase):
    """No ControllerGetCapabilities either: the client cannot ask, only try."""

    def __init__(self) -> None:
        self.volumes: dict[str, csi.Volume] = {}

    async def create_volume(self, message: csi.CreateVolumeRequest) -> csi.CreateVolumeResponse:
        if not message.name:
            raise GRPCError(Status.INVALID_ARGUMENT, "name is required")
        size = message.capacity_range.required_bytes if message.capacity_range else GiB
        volume = csi.Volume(volume_id=f"m-{message.name}", capacity_bytes=size)
        self.volumes[volume.volume_id] = volume
        return csi.CreateVolumeResponse(volume=volume)

    async def delete_volume(self, message: csi.DeleteVolumeRequest) -> csi.DeleteVolumeResponse:
        self.volumes.pop(message.volume_id, None)
        return csi.DeleteVolumeResponse()

    async def list_volumes(self, message: csi.ListVolumesRequest) -> csi.ListVolumesResponse:
        ids = sorted(self.volumes)
        start = int(message.starting_token or 0)
        count = min(message.max_entries or PAGE, PAGE)
        page = ids[start : start + count]
        rest = str(start + count) if start + count < len(ids) else ""
        entries = [csi.ListVolumesResponseEntry(volume=self.volumes[i]) for i in page]
        return csi.ListVolumesResponse(entries=entries, next_token=rest)


@contextlib.asynccontextmanager
async def minimal_driver(root: Path) -> AsyncIterator[tuple[Path, MinimalController]]:
    socket_path = root / f"m-{uuid.uuid4().hex[:8]}.sock"
    controller = MinimalController()
    server = Server([MinimalIdentity(), controller])
    await server.start(path=str(socket_path))
    try:
        yield socket_path, controller
    finally:
        server.close()
        await server.wait_closed()


async def test_works_with_what_another_driver_offers(workdir: Path) -> None:
    async with minimal_driver(workdir) as (sock, controller):
        info = await aiocsi("info", "--json", endpoint=sock)
        assert info.json()["plugin_info"] == {
            "name": "minimal.test.example",
            "vendor_version": "9.9",
            "manifest": {},
        }
        assert info.json()["probe"] == {}  # unset: ready, as the spec says
        assert info.json()["controller_capabilities"] is None
        assert info.json()["node_capabilities"] is None
        assert info.json()["node_info"] is None
        table = (await aiocsi("info", endpoint=sock)).out
        assert "ready       yes" in table
        assert "node        not offered" in table

        for name, size in (("a", "1Gi"), ("b", "1.5G"), ("c", "500M")):
            made = await aiocsi("volume", "create", name, "--size", size, "--json", endpoint=sock)
            assert made.json()["volume"]["volume_id"] == f"m-{name}"
        assert {v: c.capacity_bytes for v, c in controller.volumes.items()} == {
            "m-a": GiB,
            "m-b": 1_500_000_000,
            "m-c": 500_000_000,
        }

        # Two entries a page: the client follows next_token to the end...
        listed = (await aiocsi("volume", "list", "--json", endpoint=sock)).json()
        assert [e["volume"]["volume_id"] for e in listed["entries"]] == ["m-a", "m-b", "m-c"]
        assert listed["next_token"] == ""
        # ...or stops after one page when asked to.
        page = (
            await aiocsi("volume", "list", "--max-entries", "1", "--json", endpoint=sock)
        ).json()
        assert [e["volume"]["volume_id"] for e in page["entries"]] == ["m-a"]
        assert page["next_token"] == "1"
        text = (await aiocsi("volume", "list", "--max-entries", "1", endpoint=sock)).out
        assert "--starting-token 1" in text
        assert "1.4 GiB" in (await aiocsi("volume", "list", endpoint=sock)).out

        # No ControllerGetVolume: `volume get` reads the ListVolumes entry.
        got = (await aiocsi("volume", "get", "m-c", "--json", endpoint=sock)).json()
        assert got == {
            "volume": {
                "capacity_bytes": 500_000_000,
                "volume_id": "m-c",
                "volume_context": {},
                "accessible_topology": [],
            }
        }
        missing = await aiocsi("volume", "get", "m-zzz", endpoint=sock)
        assert missing.code == 1
        assert missing.error_line() == "NOT_FOUND: ListVolumes has no volume m-zzz"

        deleted = await aiocsi("volume", "delete", "m-a", "m-b", "--json", endpoint=sock)
        assert deleted.json() == {"deleted": [{"volume_id": "m-a"}, {"volume_id": "m-b"}]}
        assert set(controller.volumes) == {"m-c"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["volume", "stats", "m-x", "--path", "/p"],
            (
                "the driver does not offer the Node service: `aiocsi volume stats` needs its "
                "NodeGetVolumeStats (node capability GET_VOLUME_STATS)"
            ),
        ),
        (
            ["volume", "stage", "m-x", "--staging-path", "{root}/s"],
            (
                "the driver does not offer the Node service: `aiocsi volume stage` needs its "
                "NodeStageVolume (node capability STAGE_UNSTAGE_VOLUME)"
            ),
        ),
        (
            ["volume", "expand", "m-x", "--size", "2Gi"],
            (
                "the driver does not offer ControllerExpandVolume (controller capability "
                "EXPAND_VOLUME), which `aiocsi volume expand` needs"
            ),
        ),
        (
            ["snapshot", "create", "s", "--source", "m-x"],
            (
                "the driver does not offer CreateSnapshot (controller capability "
                "CREATE_DELETE_SNAPSHOT), which `aiocsi snapshot create` needs"
            ),
        ),
        (
            ["volume", "attach", "m-x", "--node", "n"],
            (
                "the driver does not offer ControllerPublishVolume (controller capability "
                "PUBLISH_UNPUBLISH_VOLUME), which `aiocsi volume attach` needs"
            ),
        ),
        (
            ["capacity"],
            (
                "the driver does not offer GetCapacity (controller capability GET_CAPACITY), "
                "which `aiocsi capacity` needs"
            ),
        ),
    ],
)
async def test_says_what_another_driver_lacks(workdir: Path, args: list[str], message: str) -> None:
    async with minimal_driver(workdir) as (sock, _):
        ran = await aiocsi(*(a.format(root=workdir) for a in args), endpoint=sock)
        assert ran.code == 1
        assert ran.error_line() == f"UNIMPLEMENTED: {message}"
