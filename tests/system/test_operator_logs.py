"""What an operator reads in the logs (issue 13): rpc lines naming Kubernetes objects, and
a log stream whose reader may stall without stopping the driver."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from aiocsi._proto.csi import v1 as csi

from .conftest import Csi, Driver, mount_capability, volume_id_of
from .operator import scrape
from .process import aiocsi_argv, answers

pytestmark = pytest.mark.system

PROBES = 3000


async def test_rpc_lines_name_the_pvc_pv_and_pod(driver: Driver) -> None:
    client, cap = driver.client, mount_capability()
    claim = {
        "csi.storage.k8s.io/pvc/namespace": "shop",
        "csi.storage.k8s.io/pvc/name": "data-db-0",
        "csi.storage.k8s.io/pv/name": "pvc-1234",
    }
    pod = {
        "csi.storage.k8s.io/ephemeral": "true",  # an inline volume: no stage needed
        "csi.storage.k8s.io/pod.namespace": "shop",
        "csi.storage.k8s.io/pod.name": "db-0",
    }
    inline_id, target = "csi-" + "ab" * 30, driver.root / "pod" / "vol"
    target.parent.mkdir()
    with capture_logs() as logs:
        created = await client.controller.create_volume(
            csi.CreateVolumeRequest(name="k8s", volume_capabilities=[cap], parameters=claim)
        )
        await client.controller.delete_volume(
            csi.DeleteVolumeRequest(volume_id=volume_id_of(created))
        )
        await client.node.node_publish_volume(
            csi.NodePublishVolumeRequest(
                volume_id=inline_id,
                target_path=str(target),
                volume_capability=cap,
                volume_context=pod,
            )
        )
        await client.node.node_unpublish_volume(
            csi.NodeUnpublishVolumeRequest(volume_id=inline_id, target_path=str(target))
        )
    rpc = {e["method"]: e for e in logs if e["event"] == "rpc"}
    create, publish = rpc["CreateVolume"], rpc["NodePublishVolume"]
    assert [create[f] for f in ("pvc_namespace", "pvc_name", "pv_name")] == [
        "shop",
        "data-db-0",
        "pvc-1234",
    ]
    assert create["volume_id"] == volume_id_of(created)
    assert (publish["pod_namespace"], publish["pod_name"]) == ("shop", "db-0")
    assert "pod_name" not in create
    for other in (rpc["DeleteVolume"], rpc["NodeUnpublishVolume"]):
        assert not {"pvc_name", "pod_name"} & set(other)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _probe_many(client: Csi, count: int, concurrency: int = 8) -> int:
    answered = 0

    async def worker(share: int) -> None:
        nonlocal answered
        for _ in range(share):
            reply = await client.identity.probe(csi.ProbeRequest(), timeout=5)
            answered += 1 if reply.ready else 0

    await asyncio.gather(*(worker(count // concurrency) for _ in range(concurrency)))
    return answered


@contextlib.asynccontextmanager
async def _serve_unread(root: Path, port: int) -> AsyncIterator[subprocess.Popen[bytes]]:
    """`aiocsi serve` whose stdout is a pipe that nobody reads (until the test does)."""
    sock = root / "unread.sock"
    argv = [
        *aiocsi_argv(),
        "serve",
        f"--endpoint=unix://{sock}",
        f"--pool={root / 'pool'}",
        "--node-id=test-node",
        f"--allowed-path-root={root}",
        "--shutdown-grace=10",
        f"--http-endpoint=127.0.0.1:{port}",
    ]
    with (root / "unread.err").open("wb") as stderr:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr)  # noqa: ASYNC220 - a fork
    try:
        deadline = time.monotonic() + 15
        while not answers(sock):
            assert proc.poll() is None, (root / "unread.err").read_text()
            assert time.monotonic() < deadline, "aiocsi serve did not start"
            await asyncio.sleep(0.02)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        assert proc.stdout is not None
        proc.stdout.close()
        proc.wait(timeout=10)


async def test_a_reader_that_stops_reading_costs_log_lines_not_calls(cleanup: Path) -> None:
    port = _free_port()
    async with _serve_unread(cleanup, port) as proc:
        client = Csi.connect(cleanup / "unread.sock")
        try:
            started = time.monotonic()
            answered = await asyncio.wait_for(_probe_many(client, PROBES), timeout=30)
            elapsed = time.monotonic() - started
        finally:
            client.channel.close()
        assert answered == PROBES
        assert elapsed < 30
        dropped = (await scrape(("127.0.0.1", port)))("aiocsi_log_lines_dropped_total")
        assert dropped > 0
        # Read the pipe again: the buffered lines, then the notice, then the shutdown's.
        assert proc.stdout is not None
        reading = asyncio.create_task(asyncio.to_thread(proc.stdout.read))
        proc.send_signal(signal.SIGTERM)
        output = await asyncio.wait_for(reading, timeout=30)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    events = [json.loads(line) for line in output.decode().splitlines()]
    notices = [e for e in events if e["event"] == "log_dropped"]
    assert notices
    assert notices[0]["count"] > 0
    assert sum(e["count"] for e in notices) >= dropped
    assert events[-1]["event"] == "stopped"
