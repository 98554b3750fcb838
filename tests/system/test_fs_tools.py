"""A node without one filesystem's tools refuses that filesystem, says why, and stays
ready for the others (engine/health.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from structlog.testing import capture_logs

from aiocsi._proto.csi import v1 as csi
from aiocsi.host.loop import all_loop_backing_files
from aiocsi.host.mount import parse_mountinfo

from .conftest import Driver, MiB, mount_capability, volume_id_of

pytestmark = pytest.mark.system

# Everything the node may run, but mkfs.xfs.
TOOLS = ("blkid", "mkfs.ext4", "e2fsck", "resize2fs", "xfs_growfs", "mkfs.btrfs", "btrfs")
EPHEMERAL = "csi.storage.k8s.io/ephemeral"


@pytest.fixture
def without_mkfs_xfs(driver: Driver, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = driver.root / "bin"
    bindir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found is not None, f"{tool} is needed on this machine"
        (bindir / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bindir))
    driver.server.engine.health.max_age = 0  # the next check sees the new PATH
    return bindir


def _ours(root: Path) -> list[str]:
    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    points = [m.mount_point for m in mounts if m.mount_point.startswith(f"{root}/")]
    devices = [d for d, f in all_loop_backing_files().items() if f.startswith(f"{root}/")]
    return points + devices


async def _create(driver: Driver, name: str, fs_type: str, size: int) -> str:
    reply = await driver.client.controller.create_volume(
        csi.CreateVolumeRequest(
            name=name,
            capacity_range=csi.CapacityRange(required_bytes=size),
            volume_capabilities=[mount_capability(fs_type)],
        )
    )
    return volume_id_of(reply)


async def _stage(driver: Driver, volume_id: str, fs_type: str) -> None:
    await driver.client.node.node_stage_volume(
        csi.NodeStageVolumeRequest(
            volume_id=volume_id,
            staging_target_path=str(driver.root / f"{volume_id}.staging"),
            volume_capability=mount_capability(fs_type),
        )
    )


async def test_probe_stays_ready_and_names_the_usable_filesystems(
    driver: Driver, without_mkfs_xfs: Path
) -> None:
    del without_mkfs_xfs
    with capture_logs() as logs:
        reply = await driver.client.identity.probe(csi.ProbeRequest())
    assert reply.ready is True
    (event,) = [e for e in logs if e["event"] == "filesystems_usable"]
    assert event["usable"] == ["ext4", "btrfs"]
    assert event["missing_tools"] == {"xfs": ["mkfs.xfs"]}
    report = await driver.server.engine.health.check()
    assert report.usable_fs_types == ("ext4", "btrfs")


async def test_an_xfs_stage_is_refused_naming_the_tool_and_leaves_nothing(
    driver: Driver, without_mkfs_xfs: Path
) -> None:
    del without_mkfs_xfs
    xfs = await _create(driver, "x", "xfs", 300 * MiB)
    with pytest.raises(GRPCError) as refused:
        await _stage(driver, xfs, "xfs")
    assert refused.value.status is Status.FAILED_PRECONDITION
    assert "cannot serve xfs volumes" in str(refused.value.message)
    assert "'mkfs.xfs' not found in PATH" in str(refused.value.message)
    assert _ours(driver.root) == []
    # ext4 still works on the same node.
    ext4 = await _create(driver, "e", "ext4", 16 * MiB)
    await _stage(driver, ext4, "ext4")
    await driver.client.node.node_unstage_volume(
        csi.NodeUnstageVolumeRequest(
            volume_id=ext4, staging_target_path=str(driver.root / f"{ext4}.staging")
        )
    )
    assert _ours(driver.root) == []
    for volume_id in (xfs, ext4):
        await driver.client.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=volume_id))


async def test_an_inline_xfs_volume_is_refused_before_it_is_made(
    driver: Driver, without_mkfs_xfs: Path
) -> None:
    del without_mkfs_xfs
    target = driver.root / "pods" / "p" / "v"
    with pytest.raises(GRPCError) as refused:
        await driver.client.node.node_publish_volume(
            csi.NodePublishVolumeRequest(
                volume_id="csi-" + "1" * 32,
                target_path=str(target),
                volume_capability=mount_capability("xfs"),
                volume_context={EPHEMERAL: "true", "size": "300Mi"},
            )
        )
    assert refused.value.status is Status.FAILED_PRECONDITION
    assert "mkfs.xfs" in str(refused.value.message)
    assert driver.server.engine.resources.store.all_volumes() == []
    assert _ours(driver.root) == []
