"""Start-up reconcile repairs each half-done state, seeded on purpose in a stopped pool.

Each test makes real volumes with one driver, stops it, puts the pool into the state a
crash (or a reboot) leaves behind — a row flipped back to `creating`, a snapshot not
ready, an image with no row, a loop device of ours that nothing uses — and starts a second
driver on the same pool. The repair must show on the host, in the driver's answers and
in the `reconciled` log event, and nothing that is not ours may be touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog

from aiocsi._proto.csi import v1 as csi
from aiocsi.host.files import create_sparse_sync
from aiocsi.host.loop import all_loop_backing_files

from .conftest import Driver, driver_config, mount_capability, running_driver, volume_id_of

pytestmark = pytest.mark.system

MiB = 1024 * 1024
DB_NAME = "aiocsi.db"


@contextlib.asynccontextmanager
async def started(root: Path) -> AsyncIterator[tuple[Driver, MutableMapping[str, Any]]]:
    """A driver on the pool under `root`, and the `reconciled` event its start logged."""
    with structlog.testing.capture_logs() as logs:
        async with running_driver(driver_config(root), root) as driver:
            [event] = [e for e in logs if e["event"] == "reconciled"]
            yield driver, event


async def create_volume(driver: Driver, name: str) -> str:
    return volume_id_of(
        await driver.client.controller.create_volume(
            csi.CreateVolumeRequest(
                name=name,
                volume_capabilities=[mount_capability()],
                capacity_range=csi.CapacityRange(required_bytes=16 * MiB),
            )
        )
    )


async def volume_ids(driver: Driver) -> list[str]:
    listed = await driver.client.controller.list_volumes(csi.ListVolumesRequest())
    return sorted(e.volume.volume_id for e in listed.entries if e.volume is not None)


async def snapshot_ids(driver: Driver) -> list[str]:
    listed = await driver.client.controller.list_snapshots(csi.ListSnapshotsRequest())
    return sorted(e.snapshot.snapshot_id for e in listed.entries if e.snapshot is not None)


def _change_one_row(db: Path, statement: str, *args: object) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        assert conn.execute(statement, args).rowcount == 1


async def change_one_row(root: Path, statement: str, *args: object) -> None:
    """Edit the stopped pool's database, as a crash between two writes leaves it."""
    await asyncio.to_thread(_change_one_row, root / "pool" / DB_NAME, statement, *args)


def _count(db: Path, query: str, *args: object) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        (count,) = conn.execute(query, args).fetchone()
    return int(count)


async def rows_with_id(root: Path, table: str, row_id: str) -> int:
    """How many rows of `table` the pool's database holds for `row_id` (read-only)."""
    query = f"SELECT count(*) FROM {table} WHERE id = ?"  # noqa: S608 - a table name of ours
    return await asyncio.to_thread(_count, root / "pool" / DB_NAME, query, row_id)


def backed_by(image: Path) -> list[str]:
    return [dev for dev, file in all_loop_backing_files().items() if file == str(image)]


async def run(*argv: str) -> str:
    done = await anyio.run_process(list(argv))
    return done.stdout.decode().strip()


async def attach(image: Path) -> str:
    return await run("losetup", "--find", "--show", str(image))


async def create_image(path: Path) -> None:
    await asyncio.to_thread(create_sparse_sync, path, MiB)


def image_of(driver: Driver, volume_id: str) -> Path:
    return driver.pool / "volumes" / f"{volume_id}.img"


@pytest.mark.parametrize("state", ["creating", "deleting"])
async def test_an_unfinished_volume_row_is_rolled_back(cleanup: Path, state: str) -> None:
    async with started(cleanup) as (driver, _):
        kept = await create_volume(driver, "kept")
        half = await create_volume(driver, "half")
        image = image_of(driver, half)
    await change_one_row(cleanup, "UPDATE volumes SET state = ? WHERE id = ?", state, half)
    async with started(cleanup) as (driver, event):
        assert event["repaired"] == {f"volume_{state}_rolled_back": 1}
        assert event["volumes"] == 1
        assert await rows_with_id(cleanup, "volumes", half) == 0
        assert not image.exists()
        assert image_of(driver, kept).exists()
        assert await volume_ids(driver) == [kept]
        # The name is free again: a retried CreateVolume makes a new volume.
        again = await create_volume(driver, "half")
        assert again != half
    async with started(cleanup) as (driver, event):
        assert event["repaired"] == {}  # repaired once, for good
        assert await volume_ids(driver) == sorted([kept, again])


async def test_a_snapshot_that_is_not_ready_is_rolled_back(cleanup: Path) -> None:
    async with started(cleanup) as (driver, _):
        source = await create_volume(driver, "source")
        made = await driver.client.controller.create_snapshot(
            csi.CreateSnapshotRequest(name="snap", source_volume_id=source)
        )
        assert made.snapshot is not None
        snapshot_id = made.snapshot.snapshot_id
        image = driver.pool / "snapshots" / f"{snapshot_id}.img"
        assert image.exists()
    await change_one_row(cleanup, "UPDATE snapshots SET ready = 0 WHERE id = ?", snapshot_id)
    async with started(cleanup) as (driver, event):
        assert event["repaired"] == {"snapshot_rolled_back": 1}
        assert (event["volumes"], event["snapshots"]) == (1, 0)
        assert await rows_with_id(cleanup, "snapshots", snapshot_id) == 0
        assert not image.exists()
        assert await snapshot_ids(driver) == []
        assert await volume_ids(driver) == [source]  # its source is not touched


async def test_images_without_a_row_are_removed_and_foreign_files_kept(cleanup: Path) -> None:
    async with started(cleanup) as (driver, _):
        kept = await create_volume(driver, "kept")
        pool = driver.pool
    orphans = [
        pool / "volumes" / f"vol-{secrets.token_hex(16)}.img",
        pool / "snapshots" / f"snap-{secrets.token_hex(16)}.img",
    ]
    # Not named like our ids: an operator's, whatever directory it sits in.
    foreign = [pool / "volumes" / "notes.img", pool / "volumes" / "vol-backup.img"]
    for path in orphans + foreign:
        await create_image(path)
    async with started(cleanup) as (driver, event):
        assert event["repaired"] == {"orphan_image_removed": 2}
        assert [p for p in orphans if p.exists()] == []
        assert all(p.exists() for p in foreign)
        assert image_of(driver, kept).exists()
        assert await volume_ids(driver) == [kept]


async def test_a_loop_device_of_ours_that_nothing_uses_is_detached(cleanup: Path) -> None:
    async with started(cleanup) as (driver, _):
        staged, idle = await create_volume(driver, "staged"), await create_volume(driver, "idle")
        staging = cleanup / "staging"
        staging.mkdir()
        stage = csi.NodeStageVolumeRequest(
            volume_id=staged, staging_target_path=str(staging), volume_capability=mount_capability()
        )
        await driver.client.node.node_stage_volume(stage)
        staged_image, idle_image = image_of(driver, staged), image_of(driver, idle)
    # Left by a crash between attach and its record; and a device that is not ours.
    await attach(idle_image)
    foreign_image = cleanup / "foreign.img"
    await create_image(foreign_image)
    foreign_device = await attach(foreign_image)
    try:
        async with started(cleanup) as (driver, event):
            assert event["repaired"] == {"loop_detached": 1}
            assert backed_by(idle_image) == []
            assert len(backed_by(staged_image)) == 1  # in use by the stage: kept
            assert backed_by(foreign_image) == [foreign_device]
            await driver.client.node.node_unstage_volume(
                csi.NodeUnstageVolumeRequest(volume_id=staged, staging_target_path=str(staging))
            )
            for volume_id in (staged, idle):
                await driver.client.controller.delete_volume(
                    csi.DeleteVolumeRequest(volume_id=volume_id)
                )
    finally:
        await run("losetup", "--detach", foreign_device)


async def test_a_stage_lost_in_a_reboot_is_forgotten(cleanup: Path) -> None:
    async with started(cleanup) as (driver, _):
        volume_id = await create_volume(driver, "rebooted")
        staging = cleanup / "staging"
        staging.mkdir()
        stage = csi.NodeStageVolumeRequest(
            volume_id=volume_id,
            staging_target_path=str(staging),
            volume_capability=mount_capability(),
        )
        await driver.client.node.node_stage_volume(stage)
        image = image_of(driver, volume_id)
    # A reboot loses every mount and loop device, and keeps the pool.
    await run("umount", str(staging))
    for device in backed_by(image):
        await run("losetup", "--detach", device)
    async with started(cleanup) as (driver, event):
        assert event["repaired"] == {"stage_forgotten": 1}
        # The CO stages again, and the volume goes on as before.
        await driver.client.node.node_stage_volume(stage)
        assert (staging / "lost+found").is_dir()
        await driver.client.node.node_unstage_volume(
            csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=str(staging))
        )
        await driver.client.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=volume_id))
