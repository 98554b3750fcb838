"""What an operator sees (issue 13): metrics during a real lifecycle, health endpoints, rpc
lines naming Kubernetes objects, and a log stream whose reader may stall."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from structlog.testing import capture_logs

from aiocsi._proto.csi import v1 as csi
from aiocsi.engine.pool import Pool, new_volume_id
from aiocsi.host.loop import all_loop_backing_files
from aiocsi.models import Volume, VolumeState
from aiocsi.state.store import DB_NAME, Store

from .conftest import (
    MAX_LOOP_STALL,
    Driver,
    LoopWatchdog,
    driver_config,
    mount_capability,
    running_driver,
    unwatched_driver,
    volume_id_of,
)
from .operator import CREATE, DELETE, STAGE, Scrape, http_get, scrape
from .process import (
    run_cli,
    slow_tool_dir,
    wait_for_slow_tools,
    wait_until_started,
)

pytestmark = pytest.mark.system

MiB = 1024 * 1024
PROBES = 3000


@pytest.fixture
async def driver(cleanup: Path) -> AsyncIterator[Driver]:
    """A driver with its operator endpoint on a port of the kernel's choice."""
    config = driver_config(cleanup, http_endpoint=("127.0.0.1", 0))
    async with running_driver(config, cleanup) as running:
        yield running


def _address(driver: Driver) -> tuple[str, int]:
    assert driver.server.operator is not None
    return driver.server.operator.endpoint.address


def _allocated(pool: Path) -> int:
    images = [*pool.glob("volumes/*.img"), *pool.glob("snapshots/*.img")]
    return sum(image.stat().st_blocks * 512 for image in images)


def _attached(pool: Path) -> int:
    return sum(1 for b in all_loop_backing_files().values() if b.startswith(f"{pool}/"))


async def _stage_held_in_mkfs(
    driver: Driver, volume_id: str, staging: Path, monkeypatch: pytest.MonkeyPatch
) -> Scrape:
    """Stage with a slow mkfs; scrape while it runs and have a different operation refused."""
    client, address = driver.client, _address(driver)
    slowbin = slow_tool_dir(driver.root, "mkfs.ext4", 1.0)
    monkeypatch.setenv("PATH", f"{slowbin}:{os.environ['PATH']}")
    stage = asyncio.create_task(
        client.node.node_stage_volume(
            csi.NodeStageVolumeRequest(
                volume_id=volume_id,
                staging_target_path=str(staging),
                volume_capability=mount_capability(),
            )
        )
    )
    try:
        await wait_until_started(slowbin)
        during = await scrape(address)
        with pytest.raises(GRPCError) as refused:
            await client.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=volume_id))
        assert refused.value.status is Status.ABORTED
    finally:
        await stage
        await wait_for_slow_tools(slowbin)
    return during


def _assert_runtime_statistics(scraped: Scrape) -> None:
    """The engine's and the store's own counts, after one refused DeleteVolume."""
    assert scraped("aiocsi_operation_retries_refused_total") == 1
    assert scraped("aiocsi_operations_queued") == 0
    assert scraped("aiocsi_store_commits_total") >= 1
    assert scraped("aiocsi_store_commit_seconds_count") == scraped("aiocsi_store_commits_total")


async def _assert_budget_figures(scraped: Scrape, driver: Driver, unallocated: int) -> None:
    """After one new sparse volume of `unallocated` bytes: the offer is free space less what
    it may still take (docs/parameters.md, "The budget formula"), as GetCapacity says; this
    pool is far from its warning level."""
    assert scraped("aiocsi_pool_provisioned_bytes") == unallocated
    capacity = await driver.client.controller.get_capacity(csi.GetCapacityRequest())
    offered = scraped("aiocsi_pool_offered_bytes")
    assert abs(offered - capacity.available_capacity) <= 2 * MiB
    free = scraped("aiocsi_pool_free_bytes")
    assert free - unallocated - 2 * MiB <= offered <= free - unallocated + 2 * MiB
    assert scraped("aiocsi_pool_foreign_bytes") > 0  # the state database, at least
    assert scraped("aiocsi_pool_space_low") == 0


async def test_a_lifecycle_is_counted_exactly(
    driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    address, client = _address(driver), driver.client
    first = await scrape(address)
    assert first.calls(CREATE, "OK") == 0
    assert first("aiocsi_operations_in_flight") == 0
    created = await client.controller.create_volume(
        csi.CreateVolumeRequest(
            name="m1",
            volume_capabilities=[mount_capability()],
            capacity_range=csi.CapacityRange(required_bytes=16 * MiB),
        )
    )
    volume_id = volume_id_of(created)
    with pytest.raises(GRPCError) as invalid:
        await client.controller.create_volume(csi.CreateVolumeRequest(name=""))
    assert invalid.value.status is Status.INVALID_ARGUMENT
    after_create = await scrape(address)
    assert after_create.calls(CREATE, "OK") == 1
    assert after_create.calls(CREATE, "InvalidArgument") == 1
    assert after_create("aiocsi_volumes", state="ready") == 1
    await _assert_budget_figures(after_create, driver, 16 * MiB)

    staging = driver.root / "staging"
    staging.mkdir()
    during = await _stage_held_in_mkfs(driver, volume_id, staging, monkeypatch)
    assert during("aiocsi_operations_in_flight") == 1
    assert during("aiocsi_calls_in_flight") == 1
    assert during.calls(STAGE, "OK") == 0

    staged = await scrape(address)
    assert staged("aiocsi_operations_in_flight") == 0
    assert staged("aiocsi_calls_in_flight") == 0
    assert staged.calls(DELETE, "Aborted") == 1
    _assert_runtime_statistics(staged)
    assert staged.calls(STAGE, "OK") == 1
    assert staged("aiocsi_command_seconds_count", command="mkfs.ext4") == 1
    assert staged("aiocsi_loop_devices_attached") == 1 == _attached(driver.pool)
    fs = os.statvfs(driver.pool)
    assert staged("aiocsi_pool_total_bytes") == fs.f_blocks * fs.f_frsize
    # ext4's lazy inode-table init may still be allocating blocks of the image: bound it.
    used_before = _allocated(driver.pool)
    used = (await scrape(address))("aiocsi_pool_allocated_bytes")
    assert used_before <= used <= _allocated(driver.pool)
    assert used > 0

    await client.node.node_unstage_volume(
        csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=str(staging))
    )
    snapshot = await client.controller.create_snapshot(
        csi.CreateSnapshotRequest(name="s1", source_volume_id=volume_id)
    )
    assert snapshot.snapshot is not None
    snapped = await scrape(address)
    assert snapped.labelled("aiocsi_snapshots", "state") == {"ready": 1}
    assert snapped("aiocsi_pool_provisioned_bytes") == 2 * 16 * MiB
    await client.controller.delete_snapshot(
        csi.DeleteSnapshotRequest(snapshot_id=snapshot.snapshot.snapshot_id)
    )
    await client.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=volume_id))
    last = await scrape(address)
    assert last.labelled("aiocsi_snapshots", "state") == {}
    assert last.calls(DELETE, "OK") == 1
    assert last.labelled("aiocsi_volumes", "state") == {}
    assert last("aiocsi_pool_provisioned_bytes") == 0
    assert last("aiocsi_pool_allocated_bytes") == 0
    assert last("aiocsi_loop_devices_attached") == 0
    assert last("aiocsi_event_loop_lag_seconds_count") > 0


async def test_reconcile_repairs_are_counted_by_kind(cleanup: Path) -> None:
    config = driver_config(cleanup, http_endpoint=("127.0.0.1", 0))
    layout = Pool(config.pool)
    await asyncio.to_thread(layout.prepare)
    for _ in range(2):  # images with no record: a crash between file and record
        await asyncio.to_thread(layout.volume_image(new_volume_id()).write_bytes, b"")
    async with running_driver(config, cleanup) as driver:
        repairs = (await scrape(_address(driver))).labelled(
            "aiocsi_reconcile_repairs_total", "kind"
        )
    assert repairs == {"orphan_image_removed": 2}


async def test_readyz_and_healthz_answer_200_when_healthy(driver: Driver) -> None:
    address = _address(driver)
    assert await http_get(address, "/healthz") == (200, "ok\n")
    assert await http_get(address, "/readyz") == (200, "ok\n")
    status, _ = await http_get(address, "/nothing")
    assert status == 404


async def test_readyz_is_503_with_the_reason_when_mkfs_is_missing(
    driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = driver.root / "bin"
    bindir.mkdir()
    for tool in ("blkid", "e2fsck", "resize2fs"):  # mkfs.ext4 left out
        found = shutil.which(tool)
        assert found is not None
        (bindir / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bindir))
    driver.server.engine.health.max_age = 0
    status, body = await http_get(_address(driver), "/readyz")
    assert status == 503
    assert body == "host tool 'mkfs.ext4' not found in PATH\n"
    # /healthz is about the process, not the host: still fine.
    assert (await http_get(_address(driver), "/healthz"))[0] == 200


async def test_a_failing_scrape_is_a_500_and_one_log_line(
    driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert driver.server.operator is not None

    async def broken() -> None:
        raise ZeroDivisionError

    monkeypatch.setattr(driver.server.operator.endpoint, "_metrics_text", broken)
    with capture_logs() as logs:
        status, _ = await http_get(_address(driver), "/metrics")
    assert status == 500
    [failure] = [e for e in logs if e["event"] == "http_request_failed"]
    assert failure["error_type"] == "ZeroDivisionError"
    assert (await http_get(_address(driver), "/healthz"))[0] == 200


def test_a_taken_http_port_is_a_startup_failure(cleanup: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(
            [
                "serve",
                f"--endpoint=unix://{cleanup / 'taken.sock'}",
                f"--pool={cleanup / 'pool'}",
                "--node-id=test-node",
                f"--http-endpoint=127.0.0.1:{port}",
            ]
        )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"aiocsi serve: error: http endpoint 127.0.0.1:{port}: Address already in use"
    )
    assert not (cleanup / "taken.sock").exists()


async def test_healthz_is_503_while_the_loop_lags(cleanup: Path) -> None:
    config = driver_config(cleanup, http_endpoint=("127.0.0.1", 0))
    async with unwatched_driver(config, cleanup) as driver:
        await _healthz_during_a_stall(driver)


async def _healthz_during_a_stall(driver: Driver) -> None:
    assert driver.server.operator is not None
    endpoint = driver.server.operator.endpoint
    endpoint.max_lag = 0.05
    # The request is sent from a thread while the driver's loop stalls.
    loop = asyncio.get_running_loop()
    request = loop.run_in_executor(None, _blocking_get, endpoint.address, "/healthz")
    time.sleep(0.3)  # noqa: ASYNC251 - the stall under test
    status, body = await request
    assert status == 503
    assert body.startswith("event loop lag ")
    await asyncio.sleep(0.3)  # the watchdog wakes on time again
    assert (await http_get(endpoint.address, "/healthz"))[0] == 200


def _seed(pool: Path, count: int) -> None:
    """`count` ready volumes, each with its sparse image, as if created one by one."""
    layout = Pool(pool)
    layout.prepare()
    volumes = [
        Volume(new_volume_id(), f"seed-{n}", MiB, VolumeState.READY, "test-node")
        for n in range(count)
    ]
    for volume in volumes:
        with layout.volume_image(volume.id).open("wb") as image:
            image.truncate(MiB)

    async def insert() -> None:
        store = Store(pool / DB_NAME)
        await store.open()
        try:
            await asyncio.gather(*(store.insert_volume(v) for v in volumes))
        finally:
            await store.close()

    asyncio.run(insert())


async def test_a_scrape_of_10000_volumes_does_not_stall_the_loop(cleanup: Path) -> None:
    config = driver_config(cleanup, http_endpoint=("127.0.0.1", 0))
    await asyncio.to_thread(_seed, config.pool, 10_000)
    # Watched from the first scrape on: the start-up reconcile of 10,000 rows is not the
    # subject here.
    async with unwatched_driver(config, cleanup) as driver:
        address = _address(driver)
        gc.collect()
        watchdog = LoopWatchdog()
        watching = asyncio.create_task(watchdog.run())
        try:
            scrapes = [await scrape(address) for _ in range(3)]
        finally:
            watching.cancel()
    assert all(s("aiocsi_volumes", state="ready") == 10_000 for s in scrapes)
    assert scrapes[-1]("aiocsi_pool_provisioned_bytes") == 10_000 * MiB
    assert watchdog.samples > 0
    assert watchdog.worst < MAX_LOOP_STALL, f"a scrape stalled the loop {watchdog.worst:.3f} s"


def _blocking_get(address: tuple[str, int], path: str) -> tuple[int, str]:
    with socket.create_connection(address, timeout=10) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()
