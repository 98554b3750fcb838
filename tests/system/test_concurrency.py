"""Many operations at once, none lost: joins, refusals, deadlines, a loop that never stalls."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from aiocsi._proto.csi import v1 as csi
from aiocsi.host import files, mount
from aiocsi.host.loop import all_loop_backing_files

from .conftest import Csi, Driver, LoopWatchdog, mount_capability, volume_id_of
from .process import slow_tool_dir, wait_for_slow_tools

MiB = 1024 * 1024


def create_request(name: str, size: int = 16 * MiB) -> csi.CreateVolumeRequest:
    return csi.CreateVolumeRequest(
        name=name,
        volume_capabilities=[mount_capability()],
        capacity_range=csi.CapacityRange(required_bytes=size),
    )


async def lifecycle(client: Csi, root: Path, name: str, payload: bytes) -> None:
    """Create, stage, publish, write, read back, unpublish, unstage, delete one volume."""
    cap = mount_capability()
    volume_id = volume_id_of(await client.controller.create_volume(create_request(name)))
    staging, target = root / "s" / name, root / "t" / name
    # A mkdir waits for the filesystem's journal, busy with the other volumes' mkfs.
    await asyncio.to_thread(staging.mkdir, parents=True)
    await client.node.node_stage_volume(
        csi.NodeStageVolumeRequest(
            volume_id=volume_id, staging_target_path=str(staging), volume_capability=cap
        )
    )
    await client.node.node_publish_volume(
        csi.NodePublishVolumeRequest(
            volume_id=volume_id,
            staging_target_path=str(staging),
            target_path=str(target),
            volume_capability=cap,
        )
    )
    await asyncio.to_thread(_write_and_check, target / "data", payload)
    await take_down(client, volume_id, staging, target)
    await client.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=volume_id))


async def take_down(client: Csi, volume_id: str, staging: Path, target: Path | None = None) -> None:
    """Unpublish (when published), unstage: what the test made is gone again."""
    if target is not None:
        await client.node.node_unpublish_volume(
            csi.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=str(target))
        )
    await client.node.node_unstage_volume(
        csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=str(staging))
    )


def _write_and_check(path: Path, payload: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    assert path.read_bytes() == payload


def _images(driver: Driver) -> list[Path]:
    return sorted((driver.pool / "volumes").glob("*.img"))


@pytest.mark.timeout(300)
async def test_64_concurrent_lifecycles_all_succeed(driver: Driver) -> None:
    names = [f"many-{i:02d}" for i in range(64)]
    await asyncio.gather(
        *(lifecycle(driver.client, driver.root, n, n.encode() * 1000) for n in names)
    )
    assert _images(driver) == []
    listed = await driver.client.controller.list_volumes(csi.ListVolumesRequest())
    assert listed.entries == []
    assert not [f for f in all_loop_backing_files().values() if f.startswith(str(driver.root))]


async def test_ten_identical_creates_make_one_volume(driver: Driver) -> None:
    replies = await asyncio.gather(
        *(driver.client.controller.create_volume(create_request("same")) for _ in range(10))
    )
    assert len({volume_id_of(r) for r in replies}) == 1
    assert all(r == replies[0] for r in replies)
    assert len(_images(driver)) == 1


async def test_unstage_racing_publish_is_aborted(
    driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = mount_capability()
    volume_id = volume_id_of(await driver.client.controller.create_volume(create_request("race")))
    staging, target = driver.root / "st", driver.root / "tg"
    staging.mkdir()
    await driver.client.node.node_stage_volume(
        csi.NodeStageVolumeRequest(
            volume_id=volume_id, staging_target_path=str(staging), volume_capability=cap
        )
    )
    # The bind is a system call, not a process to slow down: hold it at a gate instead.
    binding, release = asyncio.Event(), asyncio.Event()
    real_bind = mount.bind_mount

    async def gated_bind(
        source: Path | str, target: Path, *, read_only: bool, make_target: mount.MakeTarget
    ) -> bool:
        binding.set()
        await release.wait()
        return await real_bind(source, target, read_only=read_only, make_target=make_target)

    monkeypatch.setattr(mount, "bind_mount", gated_bind)
    publish = asyncio.create_task(
        driver.client.node.node_publish_volume(
            csi.NodePublishVolumeRequest(
                volume_id=volume_id,
                staging_target_path=str(staging),
                target_path=str(target),
                volume_capability=cap,
            )
        )
    )
    await asyncio.wait_for(binding.wait(), timeout=10)
    try:
        with pytest.raises(GRPCError) as refused:
            await driver.client.node.node_unstage_volume(
                csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=str(staging))
            )
    finally:
        release.set()
    assert refused.value.status is Status.ABORTED
    assert "NodePublishVolume is in progress" in str(refused.value.message)
    await publish
    assert (target / "lost+found").is_dir()  # the publish completed: the volume is there
    await take_down(driver.client, volume_id, staging, target)


async def test_stage_whose_deadline_expires_mid_mkfs_finishes_for_the_retry(
    driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = mount_capability()
    volume_id = volume_id_of(await driver.client.controller.create_volume(create_request("dl")))
    staging = driver.root / "st"
    staging.mkdir()
    request = csi.NodeStageVolumeRequest(
        volume_id=volume_id, staging_target_path=str(staging), volume_capability=cap
    )
    slowbin = slow_tool_dir(driver.root, "mkfs.ext4", 0.5)
    monkeypatch.setenv("PATH", f"{slowbin}:{os.environ['PATH']}")
    with pytest.raises(TimeoutError):
        await driver.client.node.node_stage_volume(request, timeout=0.05)
    await driver.client.node.node_stage_volume(request)  # joins the running stage
    await wait_for_slow_tools(slowbin)
    assert len((slowbin / "started").read_text().split()) == 1  # formatted exactly once
    image = str(driver.pool / "volumes" / f"{volume_id}.img")
    assert list(all_loop_backing_files().values()).count(image) == 1
    assert (staging / "lost+found").is_dir()
    await take_down(driver.client, volume_id, staging)


async def test_create_whose_deadline_expires_mid_copy_returns_the_same_volume(
    driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    source_id = volume_id_of(
        await driver.client.controller.create_volume(create_request("src", 32 * MiB))
    )
    source = driver.pool / "volumes" / f"{source_id}.img"
    await asyncio.to_thread(_fill, source, 32 * MiB)
    clone = csi.CreateVolumeRequest(
        name="clone",
        volume_capabilities=[mount_capability()],
        capacity_range=csi.CapacityRange(required_bytes=32 * MiB),
        volume_content_source=csi.VolumeContentSource(
            volume=csi.VolumeContentSourceVolumeSource(volume_id=source_id)
        ),
    )
    # A reflink copies in a few ms, faster than any deadline: hold the copy at a gate
    # until the deadline has passed, as the bind-mount race holds the bind.
    copying, release = asyncio.Event(), asyncio.Event()
    real_copy = files.copy_image

    async def gated_copy(*args: Any, **kwargs: Any) -> Any:
        copying.set()
        await release.wait()
        return await real_copy(*args, **kwargs)

    monkeypatch.setattr(files, "copy_image", gated_copy)
    attempt = asyncio.create_task(driver.client.controller.create_volume(clone, timeout=0.05))
    try:
        with pytest.raises(TimeoutError):
            await attempt
        await asyncio.wait_for(copying.wait(), timeout=10)
    finally:
        release.set()
    first = await driver.client.controller.create_volume(clone)
    again = await driver.client.controller.create_volume(clone)
    assert volume_id_of(first) == volume_id_of(again)
    assert len(_images(driver)) == 2
    copy = driver.pool / "volumes" / f"{volume_id_of(first)}.img"
    assert await asyncio.to_thread(_same_content, source, copy)


async def test_probe_answers_while_16_lifecycles_run(
    driver: Driver, loop_watchdog: LoopWatchdog
) -> None:
    done = asyncio.Event()
    latencies: list[float] = []

    async def probe_stream() -> None:
        loop = asyncio.get_running_loop()
        while not done.is_set():
            started = loop.time()
            reply = await driver.client.identity.probe(csi.ProbeRequest())
            assert reply.ready is True
            latencies.append(loop.time() - started)
            await asyncio.sleep(0.01)

    prober = asyncio.create_task(probe_stream())
    try:
        await asyncio.gather(
            *(lifecycle(driver.client, driver.root, f"busy-{i}", b"x" * 4096) for i in range(16))
        )
    finally:
        done.set()
        await prober
    assert len(latencies) > 5
    assert loop_watchdog.samples > 10


def _fill(path: Path, size: int) -> None:
    block = os.urandom(1024 * 1024)
    with path.open("r+b") as handle:
        for _ in range(size // len(block)):
            handle.write(block)
        os.fsync(handle.fileno())


def _same_content(a: Path, b: Path) -> bool:
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            chunk = fa.read(1 << 20)
            if chunk != fb.read(1 << 20):
                return False
            if not chunk:
                return True
