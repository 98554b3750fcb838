"""The Node service on real loop devices, filesystems and mounts (issue 4).

Every test talks to an in-process driver through the generated grpclib client and checks
the result on the host itself: /sys/block/loop*/loop/backing_file for loop devices,
/proc/self/mountinfo for mounts, statvfs for sizes, and the data read back. Paths live
under `driver.root`; the `driver` fixture unmounts and detaches whatever is left there,
and `_views_released` the read-only views stacked on those devices.
"""

from __future__ import annotations

import errno
import os
import stat
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from aiocsi._proto.csi import v1 as csi
from aiocsi.config import TOPOLOGY_KEY
from aiocsi.host import mount, process
from aiocsi.host.loop import all_loop_backing_files
from aiocsi.host.process import Completed, run
from aiocsi.models import VolumeState
from aiocsi.threads import WorkerPool

from .conftest import (
    Driver,
    block_capability,
    driver_config,
    mount_capability,
    running_driver,
    sweep,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

pytestmark = pytest.mark.system

MiB = 1024 * 1024
NODE = "test-node"
# For the tests' own commands (a foreign mount, an unmount behind the driver's back).
W = WorkerPool(4)
FS_TYPES = ["ext4", "xfs", "btrfs"]
# Small, sparse volumes: xfs and btrfs refuse anything smaller.
SIZE = {"ext4": 16 * MiB, "xfs": 300 * MiB, "btrfs": 256 * MiB, "block": 16 * MiB}
Mode = csi.VolumeCapabilityAccessModeMode
Rpc = csi.NodeServiceCapabilityRpcType
EPHEMERAL = "csi.storage.k8s.io/ephemeral"
UNKNOWN_ID = "vol-" + "0" * 32
CAP_SYS_RESOURCE = 24
DATA = b"aiocsi keeps your bytes\n" * 1000
GROW_TOOLS = frozenset({"e2fsck", "resize2fs", "dumpe2fs", "xfs_growfs", "btrfs"})


# -- host views ---------------------------------------------------------------------------


def loops_backed_by(image: Path) -> list[str]:
    """Loop devices whose backing file is `image` (deleted or not)."""
    wanted = {str(image), f"{image} (deleted)"}
    return [device for device, backing in all_loop_backing_files().items() if backing in wanted]


def views_of(device: str) -> list[str]:
    """Loop devices stacked on `device`: the driver's read-only views."""
    return sorted(view for view, backing in all_loop_backing_files().items() if backing == device)


def node_of(path: Path) -> int:
    """The device number of the block device node at `path`."""
    info = path.stat()
    assert stat.S_ISBLK(info.st_mode), f"{path} is not a device node"
    return info.st_rdev


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Every argv the driver runs from here on (it runs in this process)."""
    seen: list[tuple[str, ...]] = []
    spawn = process._spawn

    async def recording(workers: WorkerPool, argv: tuple[str, ...]) -> Completed:
        seen.append(argv)
        return await spawn(workers, argv)

    monkeypatch.setattr(process, "_spawn", recording)
    return seen


def mounts_at(path: Path) -> list[mount.MountEntry]:
    text = os.fsdecode(Path("/proc/self/mountinfo").read_bytes())
    return [m for m in mount.parse_mountinfo(text) if m.mount_point == str(path)]


def mounts_under(root: Path) -> list[str]:
    text = os.fsdecode(Path("/proc/self/mountinfo").read_bytes())
    return [
        m.mount_point for m in mount.parse_mountinfo(text) if m.mount_point.startswith(f"{root}/")
    ]


def has_capability(bit: int) -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def fs_total(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def device_bytes(device: str) -> int:
    return int(Path(f"/sys/block/{Path(device).name}/size").read_text()) * 512


async def write_file(path: Path, data: bytes) -> None:
    def write() -> None:
        with path.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    await anyio.to_thread.run_sync(write)


async def write_device(path: Path, data: bytes, offset: int = 0) -> None:
    def write() -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
            os.fsync(fd)
        finally:
            os.close(fd)

    await anyio.to_thread.run_sync(write)


async def read_device(path: Path, size: int, offset: int = 0) -> bytes:
    def read() -> bytes:
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    return await anyio.to_thread.run_sync(read)


# -- CSI calls ----------------------------------------------------------------------------


async def fails(status: Status, call: Awaitable[object]) -> str:
    """Await `call`, which must fail with `status`; return the error message."""
    with pytest.raises(GRPCError) as info:
        await call
    assert info.value.status is status, f"{info.value.status.name}: {info.value.message}"
    assert info.value.message, "every error should say why"
    return str(info.value.message)


@dataclass
class Vol:
    """One volume and the paths a CO would give it."""

    driver: Driver
    id: str
    cap: csi.VolumeCapability
    staging: Path
    target: Path

    @property
    def image(self) -> Path:
        return self.driver.pool / "volumes" / f"{self.id}.img"

    async def stage(
        self, cap: csi.VolumeCapability | None = None, staging: Path | None = None
    ) -> None:
        await self.driver.client.node.node_stage_volume(
            csi.NodeStageVolumeRequest(
                volume_id=self.id,
                staging_target_path=str(staging or self.staging),
                volume_capability=cap or self.cap,
            )
        )

    async def unstage(self, staging: Path | None = None) -> None:
        await self.driver.client.node.node_unstage_volume(
            csi.NodeUnstageVolumeRequest(
                volume_id=self.id,
                staging_target_path=str(staging or self.staging),
            )
        )

    async def publish(
        self,
        target: Path | None = None,
        *,
        readonly: bool = False,
        cap: csi.VolumeCapability | None = None,
    ) -> None:
        await self.driver.client.node.node_publish_volume(
            csi.NodePublishVolumeRequest(
                volume_id=self.id,
                staging_target_path=str(self.staging),
                target_path=str(target or self.target),
                volume_capability=cap or self.cap,
                readonly=readonly,
            )
        )

    async def unpublish(self, target: Path | None = None) -> None:
        await self.driver.client.node.node_unpublish_volume(
            csi.NodeUnpublishVolumeRequest(
                volume_id=self.id,
                target_path=str(target or self.target),
            )
        )

    async def stats(self, path: Path | None = None) -> csi.NodeGetVolumeStatsResponse:
        return await self.driver.client.node.node_get_volume_stats(
            csi.NodeGetVolumeStatsRequest(volume_id=self.id, volume_path=str(path or self.target))
        )

    async def node_expand(self, required: int, path: Path | None = None) -> int:
        response = await self.driver.client.node.node_expand_volume(
            csi.NodeExpandVolumeRequest(
                volume_id=self.id,
                volume_path=str(path or self.target),
                staging_target_path=str(self.staging),
                capacity_range=csi.CapacityRange(required_bytes=required),
            )
        )
        return int(response.capacity_bytes)

    async def controller_expand(self, required: int) -> int:
        response = await self.driver.client.controller.controller_expand_volume(
            csi.ControllerExpandVolumeRequest(
                volume_id=self.id,
                capacity_range=csi.CapacityRange(required_bytes=required),
            )
        )
        return int(response.capacity_bytes)

    async def delete(self) -> None:
        await self.driver.client.controller.delete_volume(
            csi.DeleteVolumeRequest(volume_id=self.id)
        )

    async def up(self, *, readonly: bool = False) -> None:
        await self.stage()
        await self.publish(readonly=readonly)

    async def down(self) -> None:
        await self.unpublish()
        await self.unstage()


async def new_volume(d: Driver, name: str, cap: csi.VolumeCapability, size: int = 16 * MiB) -> Vol:
    response = await d.client.controller.create_volume(
        csi.CreateVolumeRequest(
            name=name,
            capacity_range=csi.CapacityRange(required_bytes=size),
            volume_capabilities=[cap],
        )
    )
    assert response.volume is not None
    volume_id = response.volume.volume_id
    return Vol(d, volume_id, cap, d.root / f"{name}.staging", d.root / "pods" / name / "target")


def cap_for(
    kind: str, mode: int = Mode.SINGLE_NODE_WRITER, flags: tuple[str, ...] = ()
) -> csi.VolumeCapability:
    if kind == "block":
        return block_capability(mode)
    return mount_capability(kind, mode, flags)


def condition(response: csi.NodeGetVolumeStatsResponse) -> csi.VolumeCondition:
    assert response.volume_condition is not None, "VOLUME_CONDITION is advertised"
    return response.volume_condition


async def write_errno(write: Awaitable[None]) -> int:
    """Await a write that must fail; return its errno."""
    try:
        await write
    except OSError as exc:
        return exc.errno or 0
    pytest.fail("the write succeeded")


def usage(response: csi.NodeGetVolumeStatsResponse, unit: csi.VolumeUsageUnit) -> csi.VolumeUsage:
    matching = [u for u in response.usage if u.unit == unit]
    assert len(matching) == 1, response.usage
    return matching[0]


@asynccontextmanager
async def foreign_tmpfs(path: Path) -> AsyncIterator[Path]:
    """A mount the driver did not make, removed again even if the test fails."""
    await anyio.Path(path).mkdir(parents=True, exist_ok=True)
    await run(W, ["mount", "-t", "tmpfs", "-o", "size=1m", "foreign", str(path)])
    try:
        yield path
    finally:
        if mounts_at(path):
            await run(W, ["umount", str(path)])


# -- lifecycle ------------------------------------------------------------------------------


@pytest.mark.parametrize("fs_type", FS_TYPES)
async def test_mount_volume_lifecycle(driver: Driver, fs_type: str) -> None:
    vol = await new_volume(driver, f"life-{fs_type}", cap_for(fs_type), SIZE[fs_type])
    for _ in range(2):
        await vol.stage()
        assert len(loops_backed_by(vol.image)) == 1, "stage must never attach twice"
    [device] = loops_backed_by(vol.image)
    [staged] = mounts_at(vol.staging)
    assert (staged.source, staged.fs_type) == (device, fs_type)

    for _ in range(2):
        await vol.publish()
    [published] = mounts_at(vol.target)
    assert published.source == device
    assert loops_backed_by(vol.image) == [device]
    await fails(Status.FAILED_PRECONDITION, vol.unstage())  # still published
    await write_file(vol.target / "data", DATA)

    for _ in range(2):
        await vol.unpublish()
        assert not vol.target.exists(), "unpublish removes the target path"
    for _ in range(2):
        await vol.unstage()
        assert loops_backed_by(vol.image) == [], "the last unstage detaches the device"
    assert mounts_under(driver.root) == []

    await vol.up()
    assert await anyio.Path(vol.target / "data").read_bytes() == DATA
    await vol.down()
    for _ in range(2):
        await vol.delete()
    assert not vol.image.exists()


async def test_block_volume_lifecycle(driver: Driver) -> None:
    vol = await new_volume(driver, "life-block", cap_for("block"), SIZE["block"])
    for _ in range(2):
        await vol.stage()
        assert len(loops_backed_by(vol.image)) == 1
    [device] = loops_backed_by(vol.image)
    assert mounts_at(vol.staging) == [], "a block stage mounts nothing"
    for _ in range(2):
        await vol.publish()
    assert len(mounts_at(vol.target)) == 1
    target_stat, device_stat = await anyio.Path(vol.target).stat(), await anyio.Path(device).stat()
    assert stat.S_ISBLK(target_stat.st_mode)
    assert target_stat.st_rdev == device_stat.st_rdev
    await write_device(vol.target, DATA, offset=MiB)

    for _ in range(2):
        await vol.unpublish()
        assert not vol.target.exists()
    for _ in range(2):
        await vol.unstage()
        assert loops_backed_by(vol.image) == []

    await vol.up()
    assert await read_device(vol.target, len(DATA), offset=MiB) == DATA
    await vol.down()
    await vol.delete()
    assert not vol.image.exists()


async def test_existing_filesystem_is_never_reformatted(driver: Driver) -> None:
    vol = await new_volume(driver, "keep", cap_for("ext4"))
    await vol.up()
    await write_file(vol.target / "data", DATA)
    await vol.down()

    message = await fails(Status.FAILED_PRECONDITION, vol.stage(cap_for("xfs")))
    assert "ext4" in message
    assert loops_backed_by(vol.image) == [], "a refused stage undoes its attach"
    assert mounts_at(vol.staging) == []
    # No fs_type means "whatever it holds".
    await vol.stage(mount_capability(""))
    await vol.unstage()
    await vol.up()
    assert await anyio.Path(vol.target / "data").read_bytes() == DATA
    await vol.down()


async def test_stage_refuses_a_different_capability_or_path(driver: Driver) -> None:
    vol = await new_volume(driver, "stage-twice", cap_for("ext4"))
    await vol.stage()
    await fails(Status.ALREADY_EXISTS, vol.stage(cap_for("ext4", flags=("noatime",))))
    await fails(Status.FAILED_PRECONDITION, vol.stage(staging=driver.root / "elsewhere"))
    # Unstaging a path where it is not staged is a no-op that leaves the real staging alone.
    await vol.unstage(driver.root / "elsewhere")
    assert len(mounts_at(vol.staging)) == 1
    assert len(loops_backed_by(vol.image)) == 1
    await vol.unstage()


async def test_a_path_inside_another_volumes_mount_is_refused(driver: Driver) -> None:
    outer = await new_volume(driver, "nest-outer", cap_for("ext4"))
    inner = await new_volume(driver, "nest-inner", cap_for("ext4"))
    await outer.stage()
    nested = outer.staging / "sub"
    await anyio.Path(nested).mkdir()
    # A mount beneath the outer staging mount would make its unstage fail with EBUSY.
    message = await fails(Status.FAILED_PRECONDITION, inner.stage(staging=nested))
    assert outer.id in message
    assert mounts_at(nested) == []
    assert loops_backed_by(inner.image) == []
    # And the other way round: a mount over a path holding another volume's mount.
    holder = driver.root / "holder"
    await anyio.Path(holder / "staging").mkdir(parents=True)
    await inner.stage(staging=holder / "staging")
    await fails(Status.FAILED_PRECONDITION, outer.publish(holder))
    assert mounts_at(holder) == []
    await inner.unstage(holder / "staging")
    await outer.unstage()
    assert mounts_at(outer.staging) == []


# -- publish rules --------------------------------------------------------------------------


async def test_read_only_publish_refuses_writes(driver: Driver) -> None:
    vol = await new_volume(driver, "ro", cap_for("ext4"))
    await vol.stage()
    read_only = driver.root / "pods" / "ro" / "readonly"
    for _ in range(2):
        await vol.publish(read_only, readonly=True)
    [entry] = mounts_at(read_only)
    assert entry.read_only
    assert await write_errno(write_file(read_only / "x", b"no")) == errno.EROFS

    await fails(Status.ALREADY_EXISTS, vol.publish(read_only, readonly=False))
    # Read-write at another target of a SINGLE_NODE_WRITER volume is fine.
    await vol.publish()
    await write_file(vol.target / "x", b"yes")
    assert await anyio.Path(read_only / "x").read_bytes() == b"yes"
    await vol.unpublish(read_only)
    await vol.down()


async def test_read_only_block_publish_refuses_writes(driver: Driver) -> None:
    vol = await new_volume(driver, "ro-block", cap_for("block"))
    await vol.up()
    [device] = loops_backed_by(vol.image)
    read_only = driver.root / "pods" / "ro-block" / "readonly"
    for _ in range(2):
        await vol.publish(read_only, readonly=True)
    # A read-only view of the device, bound read-only: a bind alone would let writes by.
    [view] = views_of(device)
    assert node_of(read_only) == node_of(Path(view))
    [entry] = mounts_at(read_only)
    assert entry.read_only
    refused = await write_errno(write_device(read_only, b"x" * 512))
    assert refused in (errno.EPERM, errno.EROFS)
    await write_device(vol.target, DATA, offset=MiB)
    assert await read_device(read_only, len(DATA), offset=MiB) == DATA
    await fails(Status.ALREADY_EXISTS, vol.publish(read_only, readonly=False))
    assert not condition(await vol.stats(read_only)).abnormal

    # One view per read-only publication, gone with it.
    second = driver.root / "pods" / "ro-block" / "second"
    await vol.publish(second, readonly=True)
    assert len(views_of(device)) == 2
    await vol.unpublish(second)
    assert views_of(device) == [view]
    for _ in range(2):
        await vol.unpublish(read_only)
        assert views_of(device) == []
        assert not read_only.exists()
    await vol.down()
    assert loops_backed_by(vol.image) == []
    assert all_loop_backing_files().get(view) != device


async def test_read_only_mode_is_read_only_everywhere(driver: Driver) -> None:
    writer = await new_volume(driver, "rox-src", cap_for("ext4"))
    await writer.up()
    await write_file(writer.target / "data", DATA)
    await writer.down()
    reader = Vol(
        driver,
        writer.id,
        cap_for("ext4", Mode.SINGLE_NODE_READER_ONLY),
        writer.staging,
        writer.target,
    )
    await reader.up()
    assert mounts_at(reader.staging)[0].read_only
    assert await anyio.Path(reader.target / "data").read_bytes() == DATA
    assert await write_errno(write_file(reader.target / "data", b"x")) == errno.EROFS
    stats = await reader.stats()
    assert not condition(stats).abnormal, condition(stats).message
    await reader.down()

    block = await new_volume(driver, "rox-block", cap_for("block", Mode.SINGLE_NODE_READER_ONLY))
    await block.up(readonly=True)
    # A read-only loop device refuses an open for writing (EPERM on Linux 6.x).
    refused = await write_errno(write_device(block.target, b"x" * 512))
    assert refused in (errno.EROFS, errno.EPERM, errno.EACCES)
    await block.down()


async def test_single_writer_is_published_once(driver: Driver) -> None:
    vol = await new_volume(driver, "sw", cap_for("ext4", Mode.SINGLE_NODE_SINGLE_WRITER))
    await vol.up()
    second = driver.root / "pods" / "sw" / "second"
    await fails(Status.FAILED_PRECONDITION, vol.publish(second))
    other_mode = cap_for("ext4", Mode.SINGLE_NODE_MULTI_WRITER)
    await fails(Status.FAILED_PRECONDITION, vol.publish(second, cap=other_mode))
    assert not second.exists()
    await vol.publish()  # the same publication again is fine
    await vol.down()

    multi = await new_volume(driver, "mw", cap_for("ext4", Mode.SINGLE_NODE_MULTI_WRITER))
    await multi.up()
    await multi.publish(second)
    await multi.unpublish(second)
    await multi.down()


async def test_publish_needs_a_stage(driver: Driver) -> None:
    vol = await new_volume(driver, "unstaged", cap_for("ext4"))
    await fails(Status.FAILED_PRECONDITION, vol.publish())
    assert not vol.target.exists()
    block = await new_volume(driver, "unstaged-block", cap_for("block"))
    await fails(Status.FAILED_PRECONDITION, block.publish())
    assert not block.target.exists()
    # Staged for block, published for mount: refused, not an empty directory bound.
    await block.stage()
    await fails(Status.FAILED_PRECONDITION, block.publish(cap=cap_for("ext4")))
    await block.unstage()


async def test_publish_refuses_a_staging_mount_that_vanished(driver: Driver) -> None:
    vol = await new_volume(driver, "vanished", cap_for("ext4"))
    await vol.stage()
    await run(W, ["umount", str(vol.staging)])
    await fails(Status.FAILED_PRECONDITION, vol.publish())
    assert mounts_at(vol.target) == []
    await vol.stage()  # a retried stage mounts it again
    assert [m.fs_type for m in mounts_at(vol.staging)] == ["ext4"]
    await vol.publish()
    await vol.down()
    assert loops_backed_by(vol.image) == []


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("volume_id", [UNKNOWN_ID, "csi-0123abcd"])
async def test_unknown_volume_is_not_found(driver: Driver, volume_id: str) -> None:
    vol = Vol(driver, volume_id, cap_for("ext4"), driver.root / "st", driver.root / "t")
    await fails(Status.NOT_FOUND, vol.stage())
    await fails(Status.NOT_FOUND, vol.publish())
    await fails(Status.NOT_FOUND, vol.stats())
    await fails(Status.NOT_FOUND, vol.node_expand(32 * MiB))
    await fails(Status.NOT_FOUND, vol.unstage())
    assert not vol.staging.exists()
    assert not vol.target.exists()


async def test_missing_fields_are_invalid(driver: Driver) -> None:
    node = driver.client.node
    vol = await new_volume(driver, "fields", cap_for("ext4"))
    staging, target = str(vol.staging), str(vol.target)
    cap = cap_for("ext4")
    no_mode = csi.VolumeCapability(mount=csi.VolumeCapabilityMountVolume(fs_type="ext4"))
    no_type = csi.VolumeCapability(
        access_mode=csi.VolumeCapabilityAccessMode(mode=Mode.SINGLE_NODE_WRITER)
    )
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: node.node_stage_volume(
            csi.NodeStageVolumeRequest(staging_target_path=staging, volume_capability=cap)
        ),
        lambda: node.node_stage_volume(
            csi.NodeStageVolumeRequest(volume_id=vol.id, volume_capability=cap)
        ),
        lambda: node.node_stage_volume(
            csi.NodeStageVolumeRequest(volume_id=vol.id, staging_target_path=staging)
        ),
        lambda: node.node_stage_volume(
            csi.NodeStageVolumeRequest(
                volume_id=vol.id, staging_target_path=staging, volume_capability=no_mode
            )
        ),
        lambda: node.node_stage_volume(
            csi.NodeStageVolumeRequest(
                volume_id=vol.id, staging_target_path=staging, volume_capability=no_type
            )
        ),
        lambda: node.node_publish_volume(
            csi.NodePublishVolumeRequest(
                staging_target_path=staging, target_path=target, volume_capability=cap
            )
        ),
        lambda: node.node_publish_volume(
            csi.NodePublishVolumeRequest(
                volume_id=vol.id, staging_target_path=staging, volume_capability=cap
            )
        ),
        lambda: node.node_publish_volume(
            csi.NodePublishVolumeRequest(
                volume_id=vol.id, target_path=target, volume_capability=cap
            )
        ),
        lambda: node.node_publish_volume(
            csi.NodePublishVolumeRequest(
                volume_id=vol.id, staging_target_path=staging, target_path=target
            )
        ),
        lambda: node.node_publish_volume(
            csi.NodePublishVolumeRequest(
                volume_id=vol.id,
                staging_target_path=staging,
                target_path=target,
                volume_capability=no_mode,
            )
        ),
        lambda: node.node_unstage_volume(csi.NodeUnstageVolumeRequest(staging_target_path=staging)),
        lambda: node.node_unstage_volume(csi.NodeUnstageVolumeRequest(volume_id=vol.id)),
        lambda: node.node_unpublish_volume(csi.NodeUnpublishVolumeRequest(target_path=target)),
        lambda: node.node_unpublish_volume(csi.NodeUnpublishVolumeRequest(volume_id=vol.id)),
        lambda: node.node_get_volume_stats(csi.NodeGetVolumeStatsRequest(volume_path=target)),
        lambda: node.node_get_volume_stats(csi.NodeGetVolumeStatsRequest(volume_id=vol.id)),
        lambda: node.node_expand_volume(csi.NodeExpandVolumeRequest(volume_path=target)),
        lambda: node.node_expand_volume(csi.NodeExpandVolumeRequest(volume_id=vol.id)),
    ]
    for call in calls:
        await fails(Status.INVALID_ARGUMENT, call())
    assert loops_backed_by(vol.image) == []
    assert mounts_under(driver.root) == []


def outside_of(root: Path) -> Path:
    """A place outside the driver's allowed root that is still the session's to clean."""
    return root.parent / f"outside-{root.name}"


# Each path is one a careless driver would still mount inside the test's directories
# ("/" and the like are covered by tests/unit/test_node_validation.py).
BAD_PATHS = {
    "relative": lambda root: os.path.relpath(root / "rel", Path.cwd()),
    "dot-relative": lambda root: "./" + os.path.relpath(root / "rel", Path.cwd()),
    "dot-dot": lambda root: f"{root}/a/../b",
    "dot": lambda root: f"{root}/a/./b",
    "double-slash": lambda root: f"{root}/a//b",
    "leading-double-slash": lambda root: f"/{root}/x",
    "outside-root": lambda root: f"{outside_of(root)}/x",
}


@pytest.mark.parametrize("kind", sorted(BAD_PATHS))
async def test_bad_paths_are_invalid(driver: Driver, kind: str) -> None:
    try:
        await _refuses_bad_path(driver, BAD_PATHS[kind](driver.root))
    finally:
        # Recorded before it is released: a mount out there is the bug this test is for.
        left_outside = sweep(outside_of(driver.root))
    assert left_outside == []


async def _refuses_bad_path(driver: Driver, bad: str) -> None:
    vol = await new_volume(driver, "paths", cap_for("ext4"))
    good = str(driver.root / "ok")
    await fails(
        Status.INVALID_ARGUMENT,
        driver.client.node.node_stage_volume(
            csi.NodeStageVolumeRequest(
                volume_id=vol.id, staging_target_path=bad, volume_capability=vol.cap
            )
        ),
    )
    await fails(
        Status.INVALID_ARGUMENT,
        driver.client.node.node_publish_volume(
            csi.NodePublishVolumeRequest(
                volume_id=vol.id,
                staging_target_path=good,
                target_path=bad,
                volume_capability=vol.cap,
            )
        ),
    )
    await fails(
        Status.INVALID_ARGUMENT,
        driver.client.node.node_publish_volume(
            csi.NodePublishVolumeRequest(
                volume_id=vol.id,
                staging_target_path=bad,
                target_path=good,
                volume_capability=vol.cap,
            )
        ),
    )
    await fails(
        Status.INVALID_ARGUMENT,
        driver.client.node.node_unpublish_volume(
            csi.NodeUnpublishVolumeRequest(volume_id=vol.id, target_path=bad)
        ),
    )
    await fails(
        Status.INVALID_ARGUMENT,
        driver.client.node.node_unstage_volume(
            csi.NodeUnstageVolumeRequest(volume_id=vol.id, staging_target_path=bad)
        ),
    )
    assert loops_backed_by(vol.image) == []


async def test_a_symlink_out_of_the_allowed_root_is_refused(driver: Driver) -> None:
    vol = await new_volume(driver, "symlink", cap_for("ext4"))
    outside = outside_of(driver.root)
    link = driver.root / "escape"
    link.symlink_to(outside)
    try:
        await fails(Status.INVALID_ARGUMENT, vol.stage(staging=link / "staging"))
    finally:
        left_outside = sweep(outside)
    assert left_outside == []
    assert not outside.exists()
    assert loops_backed_by(vol.image) == []


@pytest.mark.parametrize(
    "flag",
    [
        "suid",
        "dev",
        "exec",
        "bind",
        "rbind",
        "remount",
        "move",
        "x-foo",
        "defaults",
        "uid=0",
        "uid=0,gid=0",
        "noatime,suid",
        "errors=panic",
        "data=ordered,suid",
        "context=system_u:object_r:tmp_t:s0",
        "commit=5x",
        " noatime",
        "",
    ],
)
async def test_dangerous_mount_flags_are_refused(driver: Driver, flag: str) -> None:
    vol = await new_volume(driver, "flags", cap_for("ext4"))
    bad = cap_for("ext4", flags=(flag,))
    await fails(Status.INVALID_ARGUMENT, vol.stage(bad))
    await fails(Status.INVALID_ARGUMENT, vol.publish(cap=bad))
    assert loops_backed_by(vol.image) == []
    assert mounts_under(driver.root) == []


async def test_allowed_mount_flags_are_applied(driver: Driver) -> None:
    cap = cap_for("ext4", flags=("noatime", "nosuid", "commit=30"))
    vol = await new_volume(driver, "good-flags", cap)
    await vol.up()
    [staged] = mounts_at(vol.staging)
    assert {"noatime", "nosuid"} <= staged.options
    assert "commit=30" in staged.super_options
    [published] = mounts_at(vol.target)
    assert "noatime" in published.options
    await vol.down()


async def unpublish_and_unstage_answer_ok(vol: Vol, target: Path, staging: Path) -> None:
    node = vol.driver.client.node
    unpublished = await node.node_unpublish_volume(
        csi.NodeUnpublishVolumeRequest(volume_id=vol.id, target_path=str(target))
    )
    unstaged = await node.node_unstage_volume(
        csi.NodeUnstageVolumeRequest(volume_id=vol.id, staging_target_path=str(staging))
    )
    assert unpublished == csi.NodeUnpublishVolumeResponse()
    assert unstaged == csi.NodeUnstageVolumeResponse()


async def assert_unused(vol: Vol) -> None:
    """The driver records no stage or publication of `vol`, and the host shows none."""
    for path in (vol.target, vol.staging):
        await fails(Status.NOT_FOUND, vol.stats(path))
    assert mounts_under(vol.driver.root) == []
    assert loops_backed_by(vol.image) == []


async def test_gone_paths_unpublish_and_unstage_ok(driver: Driver) -> None:
    vol = await new_volume(driver, "gone", cap_for("ext4"))
    # Never staged or published: both answer OK and make nothing.
    await unpublish_and_unstage_answer_ok(vol, vol.target, vol.staging)
    await assert_unused(vol)
    await vol.up()
    assert (await vol.stats()).usage  # in use now: stats finds the publication
    await vol.down()
    # The kubelet retries after the paths are gone (done already, or lost in a reboot).
    await unpublish_and_unstage_answer_ok(vol, vol.target, vol.staging)
    await assert_unused(vol)
    nowhere = driver.root / "never" / "there"
    await unpublish_and_unstage_answer_ok(vol, nowhere, nowhere)
    assert not nowhere.exists()
    # An inline volume's unpublish deletes it: a retry finds neither volume nor target.
    inline = Vol(driver, "csi-feedface", vol.cap, vol.staging, driver.root / "no-target")
    assert (
        await driver.client.node.node_unpublish_volume(
            csi.NodeUnpublishVolumeRequest(volume_id=inline.id, target_path=str(inline.target))
        )
        == csi.NodeUnpublishVolumeResponse()
    )
    listed = await driver.client.controller.list_volumes(csi.ListVolumesRequest())
    assert [e.volume.volume_id for e in listed.entries if e.volume] == [vol.id]
    # DeleteVolume refuses a volume with any stage or publication left on record.
    await vol.delete()


async def test_foreign_mounts_are_never_touched(driver: Driver) -> None:
    vol = await new_volume(driver, "foreign", cap_for("ext4"))
    async with foreign_tmpfs(driver.root / "foreign-staging") as staging:
        await fails(Status.FAILED_PRECONDITION, vol.stage(staging=staging))
        assert [m.fs_type for m in mounts_at(staging)] == ["tmpfs"]
        assert loops_backed_by(vol.image) == []
    await vol.stage()
    async with foreign_tmpfs(vol.target) as target:
        await fails(Status.FAILED_PRECONDITION, vol.publish())
        await fails(Status.FAILED_PRECONDITION, vol.unpublish())
        assert [m.fs_type for m in mounts_at(target)] == ["tmpfs"]
        assert target.is_dir()
    # Published under a foreign mount stacked on top: unpublish stops at the foreign one.
    await vol.publish()
    await run(W, ["mount", "-t", "tmpfs", "-o", "size=1m", "foreign", str(vol.target)])
    try:
        await fails(Status.FAILED_PRECONDITION, vol.unpublish())
        assert [m.fs_type for m in mounts_at(vol.target)] == ["ext4", "tmpfs"]
    finally:
        await run(W, ["umount", str(vol.target)])
    await vol.down()
    assert loops_backed_by(vol.image) == []


# -- stats ----------------------------------------------------------------------------------


async def test_stats_for_mount_and_block_volumes(driver: Driver) -> None:
    vol = await new_volume(driver, "stats", cap_for("ext4"), 32 * MiB)
    await vol.up()
    before = await vol.stats()
    assert not condition(before).abnormal
    bytes_before = usage(before, csi.VolumeUsageUnit.BYTES)
    inodes_before = usage(before, csi.VolumeUsageUnit.INODES)
    assert 24 * MiB < bytes_before.total <= 32 * MiB
    assert 0 < bytes_before.available <= bytes_before.total
    assert inodes_before.total > 0
    for i in range(10):
        await write_file(vol.target / f"f{i}", os.urandom(MiB))
    after = await vol.stats()
    assert usage(after, csi.VolumeUsageUnit.BYTES).used >= bytes_before.used + 10 * MiB
    assert usage(after, csi.VolumeUsageUnit.BYTES).available < bytes_before.available
    assert usage(after, csi.VolumeUsageUnit.INODES).used == inodes_before.used + 10
    staged = await vol.stats(vol.staging)
    assert usage(staged, csi.VolumeUsageUnit.BYTES).total == bytes_before.total
    await fails(Status.NOT_FOUND, vol.stats(driver.root / "elsewhere"))
    await fails(Status.NOT_FOUND, vol.stats(Path("some/path")))
    await vol.down()
    await fails(Status.NOT_FOUND, vol.stats())

    block = await new_volume(driver, "stats-block", cap_for("block"), 24 * MiB)
    await block.up()
    response = await block.stats()
    assert [(u.unit, u.total) for u in response.usage] == [(csi.VolumeUsageUnit.BYTES, 24 * MiB)]
    assert not condition(response).abnormal
    await block.down()


async def test_condition_abnormal_when_the_mount_is_gone(driver: Driver) -> None:
    vol = await new_volume(driver, "cond-mount", cap_for("ext4"))
    await vol.up()
    await run(W, ["umount", str(vol.target)])
    stats = await vol.stats()
    assert condition(stats).abnormal
    assert "not mounted" in condition(stats).message
    await vol.down()

    await vol.up()
    await run(W, ["mount", "-o", "remount,ro", str(vol.staging)])
    stats = await vol.stats()
    assert condition(stats).abnormal
    assert "read-only" in condition(stats).message
    await vol.down()

    block = await new_volume(driver, "cond-block", cap_for("block"))
    await block.up()
    await run(W, ["umount", str(block.target)])
    assert condition(await block.stats()).abnormal
    await block.down()


async def test_condition_abnormal_when_the_image_is_deleted(driver: Driver) -> None:
    vol = await new_volume(driver, "cond-image", cap_for("ext4"))
    await vol.up()
    await anyio.Path(vol.image).unlink()
    stats = await vol.stats()
    assert condition(stats).abnormal
    assert "missing" in condition(stats).message
    # What is left can still be released through the driver.
    await vol.down()
    assert loops_backed_by(vol.image) == []
    assert mounts_under(driver.root) == []
    # ... but nothing is staged from it again.
    assert "does not exist" in await fails(Status.FAILED_PRECONDITION, vol.stage())
    assert loops_backed_by(vol.image) == []
    await vol.delete()


# -- expansion ------------------------------------------------------------------------------


@pytest.mark.parametrize("fs_type", FS_TYPES)
async def test_online_expansion(driver: Driver, fs_type: str) -> None:
    size = SIZE[fs_type]
    vol = await new_volume(driver, f"grow-{fs_type}", cap_for(fs_type), size)
    await vol.up()
    await write_file(vol.target / "data", DATA)
    before = fs_total(vol.target)
    bigger = size + 64 * MiB
    assert await vol.controller_expand(bigger) == bigger
    if fs_type == "ext4" and not has_capability(CAP_SYS_RESOURCE):
        # EXT4_IOC_RESIZE_FS needs it, and this machine drops it even for root. The spec's
        # "volume in use": kubelet stops retrying and expands again after the next mount.
        message = await fails(Status.FAILED_PRECONDITION, vol.node_expand(bigger))
        assert "CAP_SYS_RESOURCE" in message
        assert "next staged" in message
        [device] = loops_backed_by(vol.image)
        assert device_bytes(device) == bigger, "the device grows whatever the capability"
        assert fs_total(vol.target) == before
        await vol.down()
        await vol.up()  # the stage grows it unmounted
    for _ in range(2):
        assert await vol.node_expand(bigger) == bigger
    [device] = loops_backed_by(vol.image)
    assert device_bytes(device) == bigger
    assert fs_total(vol.target) > before + 48 * MiB
    stats = await vol.stats()
    assert usage(stats, csi.VolumeUsageUnit.BYTES).total > before + 48 * MiB
    assert await anyio.Path(vol.target / "data").read_bytes() == DATA
    await vol.down()


@pytest.mark.parametrize("fs_type", FS_TYPES)
async def test_stage_grows_a_filesystem_its_image_outgrew(driver: Driver, fs_type: str) -> None:
    """Expanded while unstaged, only the image grows: the next stage grows the filesystem
    (ext4 before mounting it, xfs and btrfs right after)."""
    size = SIZE[fs_type]
    vol = await new_volume(driver, f"regrow-{fs_type}", cap_for(fs_type), size)
    await vol.up()
    await write_file(vol.target / "data", DATA)
    before = fs_total(vol.target)
    await vol.down()
    bigger = size + 64 * MiB
    assert await vol.controller_expand(bigger) == bigger
    for _ in range(2):
        await vol.stage()
    await vol.publish()
    assert fs_total(vol.target) > before + 48 * MiB
    assert await anyio.Path(vol.target / "data").read_bytes() == DATA
    assert await vol.node_expand(bigger) == bigger  # kubelet's expansion after the mount
    await vol.down()


async def test_a_read_only_stage_leaves_the_filesystem_alone(driver: Driver) -> None:
    vol = await new_volume(driver, "regrow-ro", cap_for("ext4"))
    await vol.stage()
    before = fs_total(vol.staging)
    await vol.unstage()
    assert await vol.controller_expand(80 * MiB) == 80 * MiB
    await vol.stage(cap_for("ext4", Mode.SINGLE_NODE_READER_ONLY))
    assert fs_total(vol.staging) == before
    await vol.unstage()
    await vol.stage()
    assert fs_total(vol.staging) > before + 48 * MiB
    await vol.unstage()


# ext4 at 1025 MiB: mke2fs leaves the last MiB (too small for a block group) unused, so the
# filesystem is smaller than its device and yet as large as it can get.
FULL_SIZE = {"ext4": 1025 * MiB, "xfs": SIZE["xfs"], "btrfs": SIZE["btrfs"]}


@pytest.mark.parametrize("fs_type", FS_TYPES)
async def test_stage_runs_no_grow_tool_for_a_full_size_filesystem(
    driver: Driver, spawned: list[tuple[str, ...]], fs_type: str
) -> None:
    vol = await new_volume(driver, f"full-{fs_type}", cap_for(fs_type), FULL_SIZE[fs_type])
    await vol.up()
    await vol.down()
    spawned.clear()
    await vol.up()
    assert {argv[0] for argv in spawned}.isdisjoint(GROW_TOOLS), spawned
    await vol.down()


async def test_a_blank_image_is_formatted_without_a_probe_and_never_again(
    driver: Driver, spawned: list[tuple[str, ...]]
) -> None:
    vol = await new_volume(driver, "blank", cap_for("ext4"))
    await vol.stage()
    # Nothing was ever written to the image: there is no signature to look for.
    assert [argv[0] for argv in spawned] == ["mkfs.ext4"], spawned
    await write_file(vol.staging / "data", DATA)
    await vol.unstage()
    spawned.clear()
    await vol.stage()
    # Now the image holds data: it is probed, found formatted, and kept.
    assert [argv[0] for argv in spawned] == ["blkid"], spawned
    assert await anyio.Path(vol.staging / "data").read_bytes() == DATA
    await vol.unstage()


async def test_block_expansion_refreshes_the_device(driver: Driver) -> None:
    vol = await new_volume(driver, "grow-block", cap_for("block"))
    await vol.up()
    read_only = driver.root / "pods" / "grow-block" / "readonly"
    await vol.publish(read_only, readonly=True)
    await write_device(vol.target, DATA)
    assert await vol.controller_expand(48 * MiB) == 48 * MiB
    assert await vol.node_expand(48 * MiB) == 48 * MiB
    [device] = loops_backed_by(vol.image)
    assert device_bytes(device) == 48 * MiB
    [view] = views_of(device)
    assert device_bytes(view) == 48 * MiB, "read-only views follow the device"
    await vol.unpublish(read_only)
    assert usage(await vol.stats(), csi.VolumeUsageUnit.BYTES).total == 48 * MiB
    # capacity_range is optional: the volume keeps its size and the device is refreshed.
    response = await driver.client.node.node_expand_volume(
        csi.NodeExpandVolumeRequest(volume_id=vol.id, volume_path=str(vol.target))
    )
    assert response.capacity_bytes == 48 * MiB
    assert await read_device(vol.target, len(DATA)) == DATA
    await vol.down()


async def test_node_only_expansion_grows_the_image(driver: Driver) -> None:
    vol = await new_volume(driver, "grow-node", cap_for("xfs"), SIZE["xfs"])
    await vol.up()
    before = fs_total(vol.target)
    bigger = SIZE["xfs"] + 64 * MiB
    assert await vol.node_expand(bigger) == bigger
    assert vol.image.stat().st_size == bigger
    assert fs_total(vol.target) > before + 48 * MiB
    got = await driver.client.controller.controller_get_volume(
        csi.ControllerGetVolumeRequest(volume_id=vol.id)
    )
    assert got.volume is not None
    assert got.volume.capacity_bytes == bigger
    await vol.down()


# -- node info ------------------------------------------------------------------------------


async def test_node_info_and_capabilities(driver: Driver) -> None:
    info = await driver.client.node.node_get_info(csi.NodeGetInfoRequest())
    assert info.node_id == NODE
    assert info.max_volumes_per_node == 0
    assert info.accessible_topology is not None
    assert info.accessible_topology.segments == {TOPOLOGY_KEY: NODE}
    caps = await driver.client.node.node_get_capabilities(csi.NodeGetCapabilitiesRequest())
    assert {c.rpc.type for c in caps.capabilities if c.rpc is not None} == {
        Rpc.STAGE_UNSTAGE_VOLUME,
        Rpc.GET_VOLUME_STATS,
        Rpc.EXPAND_VOLUME,
        Rpc.VOLUME_CONDITION,
        Rpc.SINGLE_NODE_MULTI_WRITER,
        Rpc.VOLUME_MOUNT_GROUP,
    }


async def test_node_info_reports_the_volume_limit(cleanup: Path) -> None:
    config = driver_config(cleanup, max_volumes_per_node=7, node_id="node-b")
    async with running_driver(config, cleanup) as d:
        info = await d.client.node.node_get_info(csi.NodeGetInfoRequest())
    assert (info.node_id, info.max_volumes_per_node) == ("node-b", 7)
    assert info.accessible_topology is not None
    assert info.accessible_topology.segments == {TOPOLOGY_KEY: "node-b"}


# -- ephemeral inline volumes ---------------------------------------------------------------


def ephemeral_request(target: Path, co_id: str, **context: str) -> csi.NodePublishVolumeRequest:
    return csi.NodePublishVolumeRequest(
        volume_id=co_id,
        target_path=str(target),
        volume_capability=cap_for(""),
        volume_context={EPHEMERAL: "true", "csi.storage.k8s.io/pod.name": "p", **context},
    )


async def test_ephemeral_inline_volume(driver: Driver) -> None:
    co_id = "csi-0123abcd" + "ef" * 28
    target = driver.root / "pods" / "inline" / "vol"
    target.parent.mkdir(parents=True)
    request = ephemeral_request(target, co_id, size="64Mi")
    for _ in range(2):
        await driver.client.node.node_publish_volume(request)
    [entry] = mounts_at(target)
    assert entry.fs_type == "ext4"
    assert 48 * MiB < fs_total(target) <= 64 * MiB
    images = list((driver.pool / "volumes").glob("*.img"))
    assert len(images) == 1
    assert len(loops_backed_by(images[0])) == 1
    await write_file(target / "data", DATA)
    stats = await driver.client.node.node_get_volume_stats(
        csi.NodeGetVolumeStatsRequest(volume_id=co_id, volume_path=str(target))
    )
    assert not condition(stats).abnormal
    # Not the same inline volume: a different size under the same id.
    await fails(
        Status.ALREADY_EXISTS,
        driver.client.node.node_publish_volume(ephemeral_request(target, co_id, size="128Mi")),
    )

    unpublish = csi.NodeUnpublishVolumeRequest(volume_id=co_id, target_path=str(target))
    for _ in range(2):
        await driver.client.node.node_unpublish_volume(unpublish)
    assert not target.exists()
    assert list((driver.pool / "volumes").glob("*.img")) == []
    assert loops_backed_by(images[0]) == []
    assert mounts_under(driver.root) == []
    assert list((driver.pool / "staging").iterdir()) == []
    assert driver.server.engine.resources.store.all_volumes() == []
    assert driver.server.engine.resources.store.publications() == []


async def test_ephemeral_inline_volume_refusals(driver: Driver) -> None:
    target = driver.root / "pods" / "inline-bad" / "vol"
    bad_size = ephemeral_request(target, "csi-bad", size="lots")
    await fails(Status.INVALID_ARGUMENT, driver.client.node.node_publish_volume(bad_size))
    block = ephemeral_request(target, "csi-block")
    block.volume_capability = block_capability()
    await fails(Status.INVALID_ARGUMENT, driver.client.node.node_publish_volume(block))
    # A failed stage leaves no volume behind.
    async with foreign_tmpfs(target) as foreign:
        await fails(
            Status.FAILED_PRECONDITION,
            driver.client.node.node_publish_volume(
                ephemeral_request(foreign, "csi-blocked", size="16Mi")
            ),
        )
    assert driver.server.engine.resources.store.all_volumes() == []
    assert list((driver.pool / "volumes").glob("*.img")) == []
    assert mounts_under(driver.root) == []


# -- reconcile ------------------------------------------------------------------------------


async def test_restart_forgets_lost_mounts_and_detaches_unused_devices(cleanup: Path) -> None:
    config = driver_config(cleanup)
    async with running_driver(config, cleanup) as first:
        lost = await new_volume(first, "lost", cap_for("ext4"))
        kept = await new_volume(first, "kept", cap_for("ext4"))
        block = await new_volume(first, "kept-block", cap_for("block"))
        for vol in (lost, kept, block):
            await vol.up()
        await write_file(lost.target / "data", DATA)
    # The driver is gone with everything in place, as after a crash. Then the node loses
    # the lost volume's mounts behind its back.
    await run(W, ["umount", str(lost.target)])
    await run(W, ["umount", str(lost.staging)])
    assert len(loops_backed_by(lost.image)) == 1

    async with running_driver(config, cleanup) as second:
        lost.driver = kept.driver = block.driver = second
        assert loops_backed_by(lost.image) == [], "an unused device of ours is detached"
        await fails(Status.NOT_FOUND, lost.stats())
        await fails(Status.FAILED_PRECONDITION, lost.publish())  # the stage was forgotten
        for vol in (kept, block):
            assert len(loops_backed_by(vol.image)) == 1
            assert not condition(await vol.stats()).abnormal
        # The CO's retries bring the lost volume back, data intact.
        await lost.unpublish()
        await lost.up()
        assert await anyio.Path(lost.target / "data").read_bytes() == DATA
        for vol in (lost, kept, block):
            await vol.down()
            assert loops_backed_by(vol.image) == []
        states = {v.state for v in second.server.engine.resources.store.all_volumes()}
        assert states == {VolumeState.READY}


async def test_restart_leaves_foreign_loop_devices_alone(cleanup: Path) -> None:
    """A loop device backed by a file outside the pool is never detached by reconcile."""
    outside = cleanup / "not-ours.img"
    await anyio.Path(outside).write_bytes(b"\0" * MiB)
    done = await run(W, ["losetup", "--find", "--show", str(outside)])
    device = done.stdout.strip()
    try:
        async with running_driver(driver_config(cleanup), cleanup):
            assert loops_backed_by(outside) == [device]
    finally:
        await run(W, ["losetup", "--detach", device])


async def test_restart_detaches_views_whose_publication_is_gone(cleanup: Path) -> None:
    """Read-only views are ours when they sit on our devices; only unused ones are detached."""
    config = driver_config(cleanup)
    async with running_driver(config, cleanup) as first:
        vol = await new_volume(first, "views", cap_for("block"))
        await vol.up()
        kept, lost = (cleanup / "pods" / "views" / name for name in ("kept", "lost"))
        for target in (kept, lost):
            await vol.publish(target, readonly=True)
    [device] = loops_backed_by(vol.image)
    kept_view = next(v for v in views_of(device) if node_of(Path(v)) == node_of(kept))
    # Behind the stopped driver's back: one publication's bind is lost, and a view was
    # attached but never bound (a crash between the two). A view over a loop device that
    # is not the driver's is not the driver's either.
    await run(W, ["umount", str(lost)])
    stray = (await run(W, ["losetup", "--read-only", "--find", "--show", device])).stdout.strip()
    outside = cleanup / "not-ours.img"
    await anyio.Path(outside).write_bytes(b"\0" * MiB)
    foreign = (await run(W, ["losetup", "--find", "--show", str(outside)])).stdout.strip()
    foreign_view = (
        await run(W, ["losetup", "--read-only", "--find", "--show", foreign])
    ).stdout.strip()
    try:
        async with running_driver(config, cleanup) as second:
            assert views_of(device) == [kept_view]
            assert all_loop_backing_files().get(stray) != device, "a view nothing shows is detached"
            assert views_of(foreign) == [foreign_view]
            vol.driver = second
            await fails(Status.NOT_FOUND, vol.stats(lost))  # the publication was forgotten
            assert not condition(await vol.stats(kept)).abnormal
            await write_device(vol.target, DATA)
            assert await read_device(kept, len(DATA)) == DATA
            for target in (lost, kept):
                await vol.unpublish(target)
            await vol.down()
            assert loops_backed_by(vol.image) == []
            assert views_of(device) == []
    finally:
        for dev, backing in ((foreign_view, foreign), (foreign, str(outside))):
            if all_loop_backing_files().get(dev) == backing:
                await run(W, ["losetup", "--detach", dev])


async def test_restart_owns_a_pool_reached_through_a_symlink(cleanup: Path) -> None:
    real_pool = cleanup / "real-pool"
    real_pool.mkdir()
    (cleanup / "pool-link").symlink_to(real_pool)
    config = driver_config(cleanup, pool=cleanup / "pool-link")
    async with running_driver(config, cleanup) as first:
        vol = await new_volume(first, "linked", cap_for("ext4"))
        await vol.up()
    image = real_pool / "volumes" / vol.image.name  # sysfs names the resolved path
    assert len(loops_backed_by(image)) == 1
    await run(W, ["umount", str(vol.target)])
    await run(W, ["umount", str(vol.staging)])
    async with running_driver(config, cleanup):
        assert loops_backed_by(image) == [], "an unused device of the pool is detached"
