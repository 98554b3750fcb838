"""Flexvolume across a driver crash and a node reboot, with the host's own python3, and
racing a CSI call on the same volume."""

from __future__ import annotations

import ast
import asyncio
import os
import signal
from pathlib import Path

import pytest

from aiocsi._proto.csi import v1 as csi
from aiocsi.flexvolume import install as installer

from .conftest import (
    Csi,
    LoopWatchdog,
    driver_config,
    mount_capability,
    release_under,
    running_driver,
    volume_id_of,
)
from .flexvolume_kubelet import Kubelet, flex_driver, install, kubelet_options, mounts_under
from .process import serve_process, slow_tool_dir, wait_for_slow_tools, wait_until_started

POD = "5f0a8e3c-1d2b-4c6a-9e7f-0123456789ab"
SYSTEM_PYTHON = Path("/usr/bin/python3")
PYTHON_38 = Path("/root/.pyenv/versions/3.8.18/bin/python3")
# The host's python3 must be there; the oldest supported one is tried when this machine has it.
PYTHONS = [SYSTEM_PYTHON, *([PYTHON_38] if PYTHON_38.exists() else [])]


def _volumes(pool: Path) -> list[str]:
    return sorted(p.name for p in (pool / "volumes").iterdir())


async def test_sigkill_while_mounted_then_restart_and_unmount(cleanup: Path) -> None:
    kubelet = install(cleanup)
    async with flex_driver(cleanup, name="first") as server:
        target = kubelet.mount(POD, "pv-crash")
        scratch = kubelet.mount(POD, "scratch", ephemeral="true")
        (target / "f").write_text("survives")
        server.signal(signal.SIGKILL)
        assert await server.wait() == -signal.SIGKILL
    assert len(mounts_under(cleanup)) == 4  # the mounts outlive the driver
    async with flex_driver(cleanup, name="second"):
        assert (target / "f").read_text() == "survives"
        kubelet.mount(POD, "pv-crash")  # the kubelet may mount again: still ours
        kubelet.unmount(target)
        kubelet.unmount(scratch)
        assert mounts_under(cleanup) == []
        assert len(_volumes(cleanup / "pool")) == 1  # the pod-scoped one is gone


async def test_node_reboot_then_unmount(cleanup: Path) -> None:
    kubelet = install(cleanup)
    async with flex_driver(cleanup, name="before") as server:
        target = kubelet.mount(POD, "pv-reboot")
        scratch = kubelet.mount(POD, "scratch", ephemeral="true")
        server.signal(signal.SIGKILL)
        await server.wait()
    release_under(cleanup)  # a reboot: every mount and loop device is gone, the pool stays
    assert mounts_under(cleanup) == []
    async with flex_driver(cleanup, name="after"):
        kubelet.unmount(target)
        kubelet.unmount(scratch)
        assert len(_volumes(cleanup / "pool")) == 1  # the pod-scoped volume was deleted
        target = kubelet.mount(POD, "pv-reboot")  # and the persistent one mounts again
        kubelet.unmount(target)
    assert mounts_under(cleanup) == []


def test_the_executable_is_python_38_stdlib_only() -> None:
    source = installer.render(Path("/run/x/flex.sock"))
    tree = ast.parse(source, feature_version=(3, 8))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert imported <= {"__future__", "json", "os", "signal", "socket", "sys"}
    assert "ENDPOINT = '/run/x/flex.sock'" in source


@pytest.mark.parametrize("python", PYTHONS, ids=str)
async def test_isolated_host_python_runs_the_executable(cleanup: Path, python: Path) -> None:
    kubelet = install(cleanup)
    interpreter = (str(python), "-I")
    assert kubelet.run("init", python=interpreter).reply["status"] == "Success"
    async with flex_driver(cleanup):
        target = kubelet.pod_dir(POD, "pv-iso")
        options = kubelet_options("pv-iso", POD)
        mounted = kubelet.run("mount", str(target), options, python=interpreter)
        assert (mounted.status, mounted.code) == ("Success", 0), mounted
        unmounted = kubelet.run("unmount", str(target), python=interpreter)
        assert (unmounted.status, unmounted.code) == ("Success", 0), unmounted
        assert kubelet.run("attach", "{}", "n", python=interpreter).status == "Not supported"
    assert mounts_under(cleanup) == []


async def test_a_mount_racing_a_csi_call_on_the_volume_is_refused(cleanup: Path) -> None:
    kubelet = install(cleanup)
    slow = slow_tool_dir(cleanup, "mkfs.ext4", 2.0)
    env = {"PATH": f"{slow}:{os.environ['PATH']}"}
    flex = ("--flexvolume-endpoint", f"unix://{kubelet.socket_path}")
    async with serve_process(cleanup, *flex, env=env) as server:
        client = Csi.connect(server.socket_path)
        try:
            created = await client.controller.create_volume(
                csi.CreateVolumeRequest(name="pv-race", volume_capabilities=[mount_capability()])
            )
            volume_id = volume_id_of(created)
            staging = cleanup / "csi-staging"
            staging.mkdir()
            stage = asyncio.create_task(
                client.node.node_stage_volume(
                    csi.NodeStageVolumeRequest(
                        volume_id=volume_id,
                        staging_target_path=str(staging),
                        volume_capability=mount_capability(),
                    )
                )
            )
            await wait_until_started(slow)
            target = kubelet.pod_dir(POD, "pv-race")
            assert "(ABORTED)" in await asyncio.to_thread(
                kubelet.fails, "mount", str(target), kubelet_options("pv-race", POD)
            )
            await stage
            await client.node.node_unstage_volume(
                csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=str(staging))
            )
        finally:
            client.channel.close()
            await wait_for_slow_tools(slow)
    assert mounts_under(cleanup) == []


async def _exec(kubelet: Kubelet, *args: str) -> object:
    """The executable run from a thread: the kubelet is another process, never the loop."""
    answer = await asyncio.to_thread(kubelet.run, *args)
    return answer.status


async def test_flexvolume_calls_never_stall_the_drivers_loop(
    cleanup: Path, loop_watchdog: LoopWatchdog
) -> None:
    kubelet = await asyncio.to_thread(install, cleanup)  # a process: not on the loop
    config = driver_config(cleanup, flexvolume_socket_path=kubelet.socket_path)
    async with running_driver(config, cleanup):
        targets = [kubelet.pod_dir(f"pod-{i}", f"pv-{i}") for i in range(4)]
        calls = [
            _exec(kubelet, "mount", str(t), kubelet_options(f"pv-{i}", f"pod-{i}"))
            for i, t in enumerate(targets)
        ]
        assert await asyncio.gather(*calls) == ["Success"] * 4
        calls = [_exec(kubelet, "unmount", str(t)) for t in targets]
        assert await asyncio.gather(*calls) == ["Success"] * 4
    assert mounts_under(cleanup) == []
    assert loop_watchdog.samples > 10
