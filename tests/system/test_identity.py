"""Identity RPCs and the interceptor, over the real socket of an in-process driver."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from structlog.testing import capture_logs

from aiocsi import __version__
from aiocsi._proto.csi import v1 as csi
from aiocsi.config import Mode
from aiocsi.engine.health import HealthChecker

from .conftest import Driver, driver_config, mount_capability, running_driver


async def test_plugin_info_names_the_driver_and_version(driver: Driver) -> None:
    info = await driver.client.identity.get_plugin_info(csi.GetPluginInfoRequest())
    assert info.name == "loop.csi.aiocsi.dev"
    assert info.vendor_version == __version__
    assert info.manifest["mode"] == "all"


async def test_capabilities_follow_the_mode(cleanup: Path) -> None:
    Service = csi.PluginCapabilityServiceType  # noqa: N806 - enum alias
    for mode, has_controller in ((Mode.ALL, True), (Mode.NODE, False), (Mode.CONTROLLER, True)):
        config = driver_config(cleanup, mode=mode, socket_path=cleanup / f"{mode.value}.sock")
        async with running_driver(config, cleanup) as drv:
            reply = await drv.client.identity.get_plugin_capabilities(
                csi.GetPluginCapabilitiesRequest()
            )
            services = {c.service.type for c in reply.capabilities if c.service is not None}
            expansion = [c.volume_expansion for c in reply.capabilities if c.volume_expansion]
            assert (Service.CONTROLLER_SERVICE in services) is has_controller
            assert (Service.GROUP_CONTROLLER_SERVICE in services) is has_controller
            assert (Service.SNAPSHOT_METADATA_SERVICE in services) is has_controller
            assert Service.VOLUME_ACCESSIBILITY_CONSTRAINTS in services
            assert [e.type for e in expansion] == [csi.PluginCapabilityVolumeExpansionType.ONLINE]


async def test_node_mode_serves_no_controller_rpcs(cleanup: Path) -> None:
    config = driver_config(cleanup, mode=Mode.NODE)
    async with running_driver(config, cleanup) as drv:
        with pytest.raises(GRPCError) as err:
            await drv.client.controller.controller_get_capabilities(
                csi.ControllerGetCapabilitiesRequest()
            )
        assert err.value.status is Status.UNIMPLEMENTED
        info = await drv.client.node.node_get_info(csi.NodeGetInfoRequest())
        assert info.node_id == "test-node"


async def test_probe_is_ready_when_pool_and_tools_are_there(driver: Driver) -> None:
    reply = await driver.client.identity.probe(csi.ProbeRequest())
    assert reply.ready is True


async def test_probe_explains_why_it_is_not_ready(driver: Driver) -> None:
    driver.server.engine.health.max_age = 0
    moved = driver.pool.with_name("pool-away")
    driver.pool.rename(moved)
    try:
        with capture_logs() as logs:
            reply = await driver.client.identity.probe(csi.ProbeRequest())
    finally:
        moved.rename(driver.pool)
    assert reply.ready is False
    (event,) = [e for e in logs if e["event"] == "probe_not_ready"]
    assert any("does not exist" in p for p in event["problems"])


async def test_probe_not_ready_when_a_node_tool_is_missing(
    driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = driver.root / "bin"
    bindir.mkdir()
    for tool in ("blkid", "mkfs.ext4", "e2fsck"):  # resize2fs left out
        found = shutil.which(tool)
        assert found is not None
        (bindir / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bindir))
    driver.server.engine.health.max_age = 0
    with capture_logs() as logs:
        reply = await driver.client.identity.probe(csi.ProbeRequest())
    assert reply.ready is False
    assert any("resize2fs" in str(e.get("problems")) for e in logs)


async def test_one_log_line_per_call_with_the_call_fields(driver: Driver) -> None:
    with capture_logs() as logs:
        await driver.client.identity.probe(csi.ProbeRequest())
        with pytest.raises(GRPCError):
            await driver.client.controller.delete_volume(csi.DeleteVolumeRequest())
        await driver.client.controller.delete_volume(
            csi.DeleteVolumeRequest(volume_id="vol-" + "0" * 32)
        )
    rpc = [e for e in logs if e["event"] == "rpc"]
    assert [(e["method"], e["grpc_code"]) for e in rpc] == [
        ("Probe", "OK"),
        ("DeleteVolume", "INVALID_ARGUMENT"),
        ("DeleteVolume", "OK"),
    ]
    assert rpc[2]["volume_id"] == "vol-" + "0" * 32
    for event in rpc:
        assert isinstance(event["duration_ms"], float)
        assert event["duration_ms"] >= 0
        assert len(str(event["request_id"])) == 16
    assert len({e["request_id"] for e in rpc}) == 3


async def test_request_id_from_metadata_is_kept(driver: Driver) -> None:
    with capture_logs() as logs:
        await driver.client.identity.probe(csi.ProbeRequest(), metadata={"x-request-id": "abc-123"})
    assert [e["request_id"] for e in logs if e["event"] == "rpc"] == ["abc-123"]


async def test_unexpected_errors_become_internal_and_are_logged_once(
    driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: object, **__: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(driver.server.engine.health, "check", broken)
    with capture_logs() as logs, pytest.raises(GRPCError) as err:
        await driver.client.identity.probe(csi.ProbeRequest())
    assert err.value.status is Status.INTERNAL
    assert "ZeroDivisionError" in str(err.value.message)
    assert err.value.details is None
    errors = [e for e in logs if e["event"] == "unexpected_error"]
    assert len(errors) == 1
    assert errors[0]["exc_info"] is True
    assert [e["grpc_code"] for e in logs if e["event"] == "rpc"] == ["INTERNAL"]


async def test_secret_values_never_reach_logs_or_error_messages(driver: Driver) -> None:
    secret = "TOPSECRET-d41d8cd98f00b204"
    with capture_logs() as logs, pytest.raises(GRPCError) as err:
        await driver.client.controller.create_volume(
            csi.CreateVolumeRequest(
                name=secret,  # the value also appears in a non-secret field, on purpose
                volume_capabilities=[mount_capability()],
                parameters={"bogus": "1"},
                secrets={"token": secret},
            )
        )
    assert err.value.status is Status.INVALID_ARGUMENT
    assert secret not in str(err.value.message)
    assert secret not in repr(logs)


@contextlib.asynccontextmanager
async def pool_moved_after_a_ready_report(driver: Driver) -> AsyncIterator[HealthChecker]:
    """A Probe answered ready (and its report kept a minute), then the pool moved away."""
    health = driver.server.engine.health
    health.max_age = 60
    assert (await driver.client.identity.probe(csi.ProbeRequest())).ready is True
    moved = driver.pool.with_name("pool-away")
    driver.pool.rename(moved)
    try:
        yield health
    finally:
        moved.rename(driver.pool)


async def test_probe_reuses_a_fresh_report(driver: Driver) -> None:
    async with pool_moved_after_a_ready_report(driver) as health:
        cached = await driver.client.identity.probe(csi.ProbeRequest())
        health.max_age = 0
        fresh = await driver.client.identity.probe(csi.ProbeRequest())
    assert cached.ready is True
    assert fresh.ready is False


async def test_a_stale_report_is_answered_at_once_and_refreshed_behind(driver: Driver) -> None:
    async with pool_moved_after_a_ready_report(driver) as health:
        health.max_age = 0.01
        await asyncio.sleep(0.02)
        # Stale: this call gets the last report, and starts the refresh it does not wait for.
        assert (await driver.client.identity.probe(csi.ProbeRequest())).ready is True
        for _ in range(100):
            reply = await driver.client.identity.probe(csi.ProbeRequest())
            if reply.ready is False:
                break
            await asyncio.sleep(0.01)
        assert reply.ready is False
