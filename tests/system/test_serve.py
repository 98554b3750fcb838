"""`aiocsi serve` as a real process: socket handling, signals, exit codes, JSON stdout."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from aiocsi import __version__
from aiocsi._proto.csi import v1 as csi

from .conftest import Csi, mount_capability, sweep, volume_id_of
from .process import (
    run_cli,
    serve_process,
    slow_tool_dir,
    wait_for_slow_tools,
    wait_until_started,
)

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--endpoint", "tcp://127.0.0.1:10000"], "only unix sockets"),
        (["--endpoint", "relative/csi.sock"], "must be absolute"),
        (["--endpoint", "unix:///" + "s" * 120], "unix sockets allow at most 107"),
        (["--mode", "everything"], "expected one of all, controller, node"),
        (["--event-loop", "trio"], "--event-loop 'trio'"),
    ],
)
def test_bad_configuration_exits_2_with_one_line(args: list[str], reason: str) -> None:
    result = run_cli(["serve", *args])
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert reason in lines[0]
    assert result.stdout == ""


def test_version_and_help() -> None:
    assert run_cli(["--version"]).stdout.strip() == f"aiocsi {__version__}"
    help_text = run_cli(["serve", "--help"]).stdout
    for flag, env in (
        ("--endpoint", "CSI_ENDPOINT"),
        ("--mode", "AIOCSI_MODE"),
        ("--node-id", "KUBE_NODE_NAME"),
        ("--pool", "AIOCSI_POOL"),
        ("--shutdown-grace", "AIOCSI_SHUTDOWN_GRACE"),
    ):
        assert flag in help_text
        assert env in help_text


async def test_socket_directory_is_created_and_mode_applied(cleanup: Path) -> None:
    async with serve_process(cleanup, socket_path=cleanup / "new" / "dir" / "a.sock") as server:
        assert stat.S_IMODE(server.socket_path.stat().st_mode) == 0o660
    async with serve_process(cleanup, "--socket-mode", "0600", name="b") as server:
        assert stat.S_IMODE(server.socket_path.stat().st_mode) == 0o600


async def test_a_live_server_is_never_displaced(cleanup: Path) -> None:
    async with serve_process(cleanup, name="one") as first:
        result = await asyncio.to_thread(
            run_cli, ["serve", "--endpoint", str(first.socket_path), "--pool", str(cleanup / "p2")]
        )
        assert result.returncode == 2
        assert "another server is answering" in result.stderr
        assert len(result.stderr.splitlines()) == 1
        client = Csi.connect(first.socket_path)
        try:
            assert (await client.identity.probe(csi.ProbeRequest())).ready is True
        finally:
            client.channel.close()


async def test_a_stale_socket_is_replaced(cleanup: Path) -> None:
    stale = cleanup / "srv.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(stale))
    sock.close()  # the file stays, nobody listens: what a crashed driver leaves behind
    async with serve_process(cleanup) as server:
        client = Csi.connect(server.socket_path)
        try:
            info = await client.identity.get_plugin_info(csi.GetPluginInfoRequest())
        finally:
            client.channel.close()
        assert info.name == "loop.csi.aiocsi.dev"


def test_a_file_that_is_not_a_socket_is_left_alone(cleanup: Path) -> None:
    precious = cleanup / "data.sock"
    precious.write_text("keep me")
    result = run_cli(["serve", "--endpoint", str(precious), "--pool", str(cleanup / "pool")])
    assert result.returncode == 2
    assert "is not a socket" in result.stderr
    assert precious.read_text() == "keep me"


async def test_a_second_driver_on_the_same_pool_is_refused(cleanup: Path) -> None:
    async with serve_process(cleanup, name="one"):
        result = await asyncio.to_thread(
            run_cli,
            ["serve", "--endpoint", str(cleanup / "two.sock"), "--pool", str(cleanup / "pool")],
        )
    assert result.returncode == 2
    assert "another aiocsi process is using the pool" in result.stderr
    assert not (cleanup / "two.sock").exists()


async def _stage_during_slow_mkfs(client: Csi, root: Path, slowbin: Path) -> asyncio.Task[object]:
    """Start a NodeStage and return once it is inside the (slow) mkfs."""
    created = await client.controller.create_volume(
        csi.CreateVolumeRequest(
            name="slow",
            volume_capabilities=[mount_capability()],
            capacity_range=csi.CapacityRange(required_bytes=16 * MiB),
        )
    )
    staging = root / "staging"
    staging.mkdir()
    stage = asyncio.create_task(
        client.node.node_stage_volume(
            csi.NodeStageVolumeRequest(
                volume_id=volume_id_of(created),
                staging_target_path=str(staging),
                volume_capability=mount_capability(),
            )
        )
    )
    await wait_until_started(slowbin)
    return stage


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
async def test_sigterm_drains_in_flight_calls_and_refuses_new_ones(
    cleanup: Path, event_loop: str
) -> None:
    slowbin = slow_tool_dir(cleanup, "mkfs.ext4", 1.5)
    env = {"PATH": f"{slowbin}:{os.environ['PATH']}"}
    args = ("--shutdown-grace", "20", "--event-loop", event_loop)
    async with serve_process(cleanup, *args, env=env) as server:
        client = Csi.connect(server.socket_path)
        try:
            slow = await _stage_during_slow_mkfs(client, cleanup, slowbin)
            server.signal(signal.SIGTERM)
            await _until(lambda: any(e.get("event") == "draining" for e in server.log_lines()))
            with pytest.raises(GRPCError) as refused:
                await client.identity.probe(csi.ProbeRequest())
            assert refused.value.status is Status.UNAVAILABLE
            await slow  # the in-flight stage completes despite the signal
            assert await server.wait() == 0
        finally:
            client.channel.close()
    assert not server.socket_path.exists()
    codes = [(e["method"], e["grpc_code"]) for e in server.log_lines() if e.get("event") == "rpc"]
    assert ("NodeStageVolume", "OK") in codes
    assert ("Probe", "UNAVAILABLE") in codes
    [serving] = [e for e in server.log_lines() if e.get("event") == "serving"]
    assert serving["event_loop"] == event_loop
    # A stopped driver leaves its stages in place (the CO unstages them): the test does.
    assert [entry.split()[0] for entry in sweep(cleanup)] == ["loop", "mount"]


async def test_a_second_signal_cuts_the_drain_short(cleanup: Path) -> None:
    slowbin = slow_tool_dir(cleanup, "mkfs.ext4", 3)
    env = {"PATH": f"{slowbin}:{os.environ['PATH']}"}
    async with serve_process(cleanup, "--shutdown-grace", "60", env=env) as server:
        client = Csi.connect(server.socket_path)
        try:
            slow = await _stage_during_slow_mkfs(client, cleanup, slowbin)
            server.signal(signal.SIGTERM)
            await _until(lambda: any(e.get("event") == "draining" for e in server.log_lines()))
            server.signal(signal.SIGTERM)
            assert await server.wait(timeout=2) == 0
            with pytest.raises(StreamTerminatedError):
                await slow
        finally:
            client.channel.close()
            await wait_for_slow_tools(slowbin)
    events = [e.get("event") for e in server.log_lines()]
    assert "drain_cut_short" in events
    assert "stopped_abandoning_work" in events
    assert not server.socket_path.exists()
    # The abandoned stage's loop device stays until a restart's reconcile: the test frees it.
    assert [entry.split()[0] for entry in sweep(cleanup)] == ["loop"]


async def test_stdout_is_one_json_object_per_line_and_secrets_never_appear(cleanup: Path) -> None:
    secret = "S3CRET-7f1e0c9a"
    async with serve_process(cleanup, "--log-level", "debug") as server:
        client = Csi.connect(server.socket_path)
        try:
            created = await client.controller.create_volume(
                csi.CreateVolumeRequest(
                    name="sec", volume_capabilities=[mount_capability()], secrets={"key": secret}
                )
            )
            with pytest.raises(GRPCError):
                await client.controller.create_volume(
                    csi.CreateVolumeRequest(
                        name="bad",
                        volume_capabilities=[mount_capability()],
                        parameters={"nope": secret},
                        secrets={"key": secret},
                    )
                )
            await client.controller.delete_volume(
                csi.DeleteVolumeRequest(volume_id=volume_id_of(created), secrets={"key": secret})
            )
            await client.identity.probe(csi.ProbeRequest())
        finally:
            client.channel.close()
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
    lines = server.stdout_path.read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert len(events) == len(lines)
    rpc = [e["method"] for e in events if e["event"] == "rpc"]
    assert rpc == ["CreateVolume", "CreateVolume", "DeleteVolume", "Probe"]
    assert any(e["event"] == "rpc_request" and e["request"].get("secrets") == "***" for e in events)
    everything = server.output() + b"".join(
        p.read_bytes() for p in (cleanup / "pool").rglob("*") if p.is_file()
    )
    assert secret.encode() not in everything


async def _until(predicate: object, timeout: float = 10.0) -> None:
    assert callable(predicate)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)
