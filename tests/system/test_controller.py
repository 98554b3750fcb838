"""The Controller service over the real socket, checked against CSI v1.12.0 and issue 3.

Every test talks to an in-process driver through the generated grpclib client. Volume
data is written straight into the pool's image files (the Node service is not under test
here), so restores and clones can be compared byte for byte.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from aiocsi._proto.csi import v1 as csi
from aiocsi.config import TOPOLOGY_KEY

from .conftest import Driver, block_capability, driver_config, mount_capability, running_driver

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable
    from pathlib import Path

pytestmark = pytest.mark.system

MiB = 1024 * 1024
NODE = "test-node"
Rpc = csi.ControllerServiceCapabilityRpcType
Mode = csi.VolumeCapabilityAccessModeMode
SINGLE_NODE_MODES = (
    Mode.SINGLE_NODE_WRITER,
    Mode.SINGLE_NODE_READER_ONLY,
    Mode.SINGLE_NODE_SINGLE_WRITER,
    Mode.SINGLE_NODE_MULTI_WRITER,
)
MULTI_NODE_MODES = (
    Mode.MULTI_NODE_READER_ONLY,
    Mode.MULTI_NODE_SINGLE_WRITER,
    Mode.MULTI_NODE_MULTI_WRITER,
)
ALWAYS = {
    Rpc.CREATE_DELETE_VOLUME,
    Rpc.LIST_VOLUMES,
    Rpc.GET_CAPACITY,
    Rpc.CREATE_DELETE_SNAPSHOT,
    Rpc.LIST_SNAPSHOTS,
    Rpc.CLONE_VOLUME,
    Rpc.EXPAND_VOLUME,
    Rpc.LIST_VOLUMES_PUBLISHED_NODES,
    Rpc.VOLUME_CONDITION,
    Rpc.GET_VOLUME,
    Rpc.SINGLE_NODE_MULTI_WRITER,
    Rpc.MODIFY_VOLUME,
    Rpc.GET_SNAPSHOT,
}
WITH_ATTACH = {Rpc.PUBLISH_UNPUBLISH_VOLUME, Rpc.PUBLISH_READONLY}


# -- helpers ------------------------------------------------------------------------------


async def fails(status: Status, call: Awaitable[object]) -> str:
    """Await `call`, which must fail with `status`; return the error message."""
    with pytest.raises(GRPCError) as info:
        await call
    assert info.value.status is status, f"{info.value.status.name}: {info.value.message}"
    assert info.value.message, "every error should say why"
    return str(info.value.message)


def create_request(
    name: str,
    *,
    required: int = 8 * MiB,
    limit: int = 0,
    caps: list[csi.VolumeCapability] | None = None,
    params: dict[str, str] | None = None,
    mutable: dict[str, str] | None = None,
    source: csi.VolumeContentSource | None = None,
    topology: csi.TopologyRequirement | None = None,
) -> csi.CreateVolumeRequest:
    capacity = (
        csi.CapacityRange(required_bytes=required, limit_bytes=limit) if required or limit else None
    )
    return csi.CreateVolumeRequest(
        name=name,
        capacity_range=capacity,
        volume_capabilities=[mount_capability()] if caps is None else caps,
        parameters=params or {},
        mutable_parameters=mutable or {},
        volume_content_source=source,
        accessibility_requirements=topology,
    )


async def create(d: Driver, name: str, **kwargs: object) -> csi.Volume:
    response = await d.client.controller.create_volume(create_request(name, **kwargs))  # type: ignore[arg-type]
    assert response.volume is not None
    return response.volume


def from_snapshot(snapshot_id: str) -> csi.VolumeContentSource:
    return csi.VolumeContentSource(
        snapshot=csi.VolumeContentSourceSnapshotSource(snapshot_id=snapshot_id)
    )


def from_volume(volume_id: str) -> csi.VolumeContentSource:
    return csi.VolumeContentSource(volume=csi.VolumeContentSourceVolumeSource(volume_id=volume_id))


async def snapshot(d: Driver, name: str, source: str) -> csi.Snapshot:
    response = await d.client.controller.create_snapshot(
        csi.CreateSnapshotRequest(name=name, source_volume_id=source)
    )
    assert response.snapshot is not None
    return response.snapshot


async def delete(d: Driver, volume_id: str) -> None:
    await d.client.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=volume_id))


async def get_volume(d: Driver, volume_id: str) -> csi.ControllerGetVolumeResponse:
    return await d.client.controller.controller_get_volume(
        csi.ControllerGetVolumeRequest(volume_id=volume_id)
    )


async def list_all_volume_ids(d: Driver) -> list[str]:
    response = await d.client.controller.list_volumes(csi.ListVolumesRequest())
    assert response.next_token == ""
    return [e.volume.volume_id for e in response.entries if e.volume is not None]


def image(d: Driver, volume_id: str) -> Path:
    return d.pool / "volumes" / f"{volume_id}.img"


def snapshot_image(d: Driver, snapshot_id: str) -> Path:
    return d.pool / "snapshots" / f"{snapshot_id}.img"


def topology(node: str) -> csi.Topology:
    return csi.Topology(segments={TOPOLOGY_KEY: node})


async def write_at(path: Path, chunks: dict[int, bytes]) -> None:
    def write() -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            for offset, data in chunks.items():
                os.pwrite(fd, data, offset)
            os.fsync(fd)
        finally:
            os.close(fd)

    await anyio.to_thread.run_sync(write)


async def read_all(path: Path) -> bytes:
    return await anyio.Path(path).read_bytes()


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


async def capacity(d: Driver, **kwargs: object) -> csi.GetCapacityResponse:
    return await d.client.controller.get_capacity(csi.GetCapacityRequest(**kwargs))  # type: ignore[arg-type]


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def pool_total(d: Driver) -> int:
    st = os.statvfs(d.pool)
    return st.f_blocks * st.f_frsize


# What the pool's own writes (the database, new images' metadata) or other writers on the
# same disk may change between our statvfs and the driver's.
SPACE_SLACK = 2 * MiB


async def offered_between(d: Driver, overcommit: float, unallocated: int, **kwargs: object) -> int:
    """GetCapacity, checked against overcommit x free - unallocated, with free measured
    just before and just after the call (docs/parameters.md, "Capacity")."""
    before = free_bytes(d.pool)
    offered = (await capacity(d, **kwargs)).available_capacity
    after = free_bytes(d.pool)
    low = int(min(before, after) * overcommit) - unallocated - SPACE_SLACK
    high = int(max(before, after) * overcommit) - unallocated + SPACE_SLACK
    assert max(low, 0) <= offered <= max(high, 0), (low, offered, high)
    return offered


async def stage(d: Driver, volume_id: str, path: Path, cap: csi.VolumeCapability) -> None:
    await d.client.node.node_stage_volume(
        csi.NodeStageVolumeRequest(
            volume_id=volume_id, staging_target_path=str(path), volume_capability=cap
        )
    )


async def unstage(d: Driver, volume_id: str, path: Path) -> None:
    await d.client.node.node_unstage_volume(
        csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=str(path))
    )


# -- capabilities -------------------------------------------------------------------------


async def test_capabilities_list_exactly_the_implemented_set(driver: Driver) -> None:
    response = await driver.client.controller.controller_get_capabilities(
        csi.ControllerGetCapabilitiesRequest()
    )
    rpcs = [c.rpc.type for c in response.capabilities if c.rpc is not None]
    assert len(rpcs) == len(set(rpcs))
    assert set(rpcs) == ALWAYS
    # Attach is off by default: the calls it would need answer UNIMPLEMENTED.
    volume = await create(driver, "no-attach")
    await fails(
        Status.UNIMPLEMENTED,
        driver.client.controller.controller_publish_volume(
            csi.ControllerPublishVolumeRequest(
                volume_id=volume.volume_id, node_id=NODE, volume_capability=mount_capability()
            )
        ),
    )
    await fails(
        Status.UNIMPLEMENTED,
        driver.client.controller.controller_unpublish_volume(
            csi.ControllerUnpublishVolumeRequest(volume_id=volume.volume_id, node_id=NODE)
        ),
    )


# -- CreateVolume -------------------------------------------------------------------------


async def test_create_volume_is_idempotent_by_name(driver: Driver) -> None:
    first = await create(driver, "pvc-1", required=10 * MiB, limit=20 * MiB)
    again = await create(driver, "pvc-1", required=10 * MiB, limit=20 * MiB)
    assert again.volume_id == first.volume_id
    assert again.capacity_bytes == first.capacity_bytes == 10 * MiB
    # A different but compatible range is still the same volume.
    compatible = await create(driver, "pvc-1", required=9 * MiB, limit=0)
    assert compatible.volume_id == first.volume_id
    assert first.accessible_topology == [topology(NODE)]
    assert image(driver, first.volume_id).stat().st_size == 10 * MiB
    assert await list_all_volume_ids(driver) == [first.volume_id]

    await fails(Status.ALREADY_EXISTS, create(driver, "pvc-1", required=30 * MiB))
    await fails(Status.ALREADY_EXISTS, create(driver, "pvc-1", required=8 * MiB, limit=9 * MiB))
    await fails(
        Status.ALREADY_EXISTS,
        create(driver, "pvc-1", required=10 * MiB, params={"preallocate": "true"}),
    )
    other = await create(driver, "pvc-2")
    await fails(
        Status.ALREADY_EXISTS,
        create(driver, "pvc-1", required=10 * MiB, source=from_volume(other.volume_id)),
    )
    # A volume too small for the filesystem asked for now cannot be "the same" volume.
    await fails(
        Status.ALREADY_EXISTS,
        create(driver, "pvc-1", required=10 * MiB, caps=[mount_capability("xfs")]),
    )
    assert sorted(await list_all_volume_ids(driver)) == sorted([first.volume_id, other.volume_id])


async def test_create_volume_concurrent_retries_join(driver: Driver) -> None:
    request = create_request("joined", required=16 * MiB)
    responses = await asyncio.gather(
        *(driver.client.controller.create_volume(request) for _ in range(5))
    )
    ids = {r.volume.volume_id for r in responses if r.volume is not None}
    assert len(ids) == 1
    assert len(await list_all_volume_ids(driver)) == 1


async def test_create_volume_refuses_invalid_requests(driver: Driver) -> None:
    cases: dict[str, csi.CreateVolumeRequest] = {
        "no name": create_request(""),
        "long name": create_request("n" * 129),
        "no capabilities": create_request("x", caps=[]),
        "no access mode": create_request(
            "x", caps=[csi.VolumeCapability(mount=csi.VolumeCapabilityMountVolume())]
        ),
        "no access type": create_request(
            "x",
            caps=[
                csi.VolumeCapability(
                    access_mode=csi.VolumeCapabilityAccessMode(mode=Mode.SINGLE_NODE_WRITER)
                )
            ],
        ),
        "unknown fs": create_request("x", caps=[mount_capability("zfs")]),
        # A mount flag NodeStage would refuse is refused before anything is provisioned.
        "unsafe mount flag": create_request("x", caps=[mount_capability(flags=("bind",))]),
        "unknown parameter": create_request("x", params={"colour": "blue"}),
        "bad parameter value": create_request("x", params={"preallocate": "maybe"}),
        "unknown mutable parameter": create_request("x", mutable={"iops": "100"}),
        "required above limit": create_request("x", required=10 * MiB, limit=9 * MiB),
        "negative size": create_request("x", required=-1),
        "empty content source": create_request("x", source=csi.VolumeContentSource()),
    }
    for mode in MULTI_NODE_MODES:
        cases[f"mount {mode.name}"] = create_request("x", caps=[mount_capability(mode=mode)])
        cases[f"block {mode.name}"] = create_request("x", caps=[block_capability(mode=mode)])
    for what, request in cases.items():
        with pytest.raises(GRPCError) as info:
            await driver.client.controller.create_volume(request)
        assert info.value.status is Status.INVALID_ARGUMENT, (what, info.value.message)
    assert await list_all_volume_ids(driver) == []
    assert list((driver.pool / "volumes").iterdir()) == []


async def test_create_volume_accepts_every_single_node_mode(driver: Driver) -> None:
    for i, mode in enumerate(SINGLE_NODE_MODES):
        for cap in (mount_capability(mode=mode), block_capability(mode=mode)):
            volume = await create(driver, f"mode-{i}-{cap.block is None}", caps=[cap])
            assert volume.capacity_bytes == 8 * MiB
    both = await create(driver, "both", caps=[mount_capability(), block_capability()])
    assert both.capacity_bytes == 8 * MiB


async def test_preallocate_parameter(driver: Driver) -> None:
    sparse = await create(driver, "sparse", required=32 * MiB, params={"preallocate": "false"})
    full = await create(
        driver,
        "full",
        required=32 * MiB,
        # Values are case-insensitive; keys the CO adds itself are accepted and ignored.
        params={
            "preallocate": "TRUE",
            "csi.storage.k8s.io/pvc/name": "claim",
            "csi.storage.k8s.io/pvc/namespace": "default",
        },
    )
    assert allocated(image(driver, sparse.volume_id)) < MiB
    assert allocated(image(driver, full.volume_id)) >= 32 * MiB
    # The ignored CO keys do not make a retry incompatible.
    again = await create(driver, "full", required=32 * MiB, params={"preallocate": "true"})
    assert again.volume_id == full.volume_id
    # preallocate in mutable_parameters (a VolumeAttributesClass) works the same way.
    vac = await create(driver, "vac", required=16 * MiB, mutable={"preallocate": "true"})
    assert allocated(image(driver, vac.volume_id)) >= 16 * MiB


async def test_capacity_range_is_honoured(driver: Driver) -> None:
    cases: list[tuple[str, dict[str, object], int]] = [
        ("default", {"required": 0}, 64 * MiB),  # driver_config's default_volume_size
        ("rounded", {"required": 10 * MiB + 1}, 11 * MiB),
        ("limit-only", {"required": 0, "limit": 20 * MiB}, 20 * MiB),
        (
            "limit-caps-rounding",
            {"required": 10 * MiB + 1, "limit": 10 * MiB + 4096},
            10 * MiB + 4096,
        ),
        ("exact", {"required": 5 * MiB + 512, "limit": 5 * MiB + 512}, 5 * MiB + 512),
        ("aligned-below-limit", {"required": 0, "limit": 6 * MiB + 512}, 6 * MiB),
        ("block-tiny", {"required": 1, "caps": [block_capability()]}, MiB),
        ("ext4-minimum", {"required": MiB}, 4 * MiB),
        ("xfs-default", {"required": 0, "caps": [mount_capability("xfs")]}, 300 * MiB),
        ("xfs-minimum", {"required": 10 * MiB, "caps": [mount_capability("xfs")]}, 300 * MiB),
    ]
    for name, kwargs, expected in cases:
        volume = await create(driver, name, **kwargs)
        assert volume.capacity_bytes == expected, name
        assert image(driver, volume.volume_id).stat().st_size == expected, name

    impossible: list[dict[str, object]] = [
        {"required": 0, "limit": 512 * 1024, "caps": [block_capability()]},
        {"required": 3 * MiB, "limit": 3 * MiB + 100},  # below ext4's minimum
        {"required": 10 * MiB + 1, "limit": 10 * MiB + 100},  # no 512-byte multiple fits
        {"required": 0, "limit": 200 * MiB, "caps": [mount_capability("xfs")]},
    ]
    for i, kwargs in enumerate(impossible):
        await fails(Status.OUT_OF_RANGE, create(driver, f"impossible-{i}", **kwargs))
    assert len(await list_all_volume_ids(driver)) == len(cases)


async def test_topology_requirements(driver: Driver) -> None:
    ours, other = topology(NODE), topology("node-b")
    placed = [
        await create(driver, "anywhere"),
        await create(driver, "requisite", topology=csi.TopologyRequirement(requisite=[ours])),
        await create(
            driver,
            "one-of",
            topology=csi.TopologyRequirement(requisite=[other, ours], preferred=[other, ours]),
        ),
        # Preferred alone is a wish, not a constraint (CSI: with no requisite the SP may
        # choose any topology).
        await create(driver, "preferred", topology=csi.TopologyRequirement(preferred=[other])),
    ]
    for volume in placed:
        assert volume.accessible_topology == [topology(NODE)]
    await fails(
        Status.RESOURCE_EXHAUSTED,
        create(
            driver,
            "elsewhere",
            topology=csi.TopologyRequirement(requisite=[other], preferred=[other]),
        ),
    )
    await fails(
        Status.RESOURCE_EXHAUSTED,
        create(
            driver,
            "foreign-key",
            topology=csi.TopologyRequirement(requisite=[csi.Topology(segments={"zone": "a"})]),
        ),
    )
    assert len(await list_all_volume_ids(driver)) == len(placed)


async def test_content_source_errors(driver: Driver) -> None:
    source = await create(driver, "source", required=16 * MiB)
    snap = await snapshot(driver, "snap", source.volume_id)
    await fails(Status.NOT_FOUND, create(driver, "r1", source=from_snapshot("snap-" + "0" * 32)))
    await fails(Status.NOT_FOUND, create(driver, "r2", source=from_snapshot("no-such-snap")))
    await fails(Status.NOT_FOUND, create(driver, "c1", source=from_volume("vol-" + "0" * 32)))
    await fails(Status.NOT_FOUND, create(driver, "c2", source=from_volume("../../etc/passwd")))
    # The new volume must hold the whole source.
    await fails(
        Status.OUT_OF_RANGE,
        create(
            driver, "r3", required=8 * MiB, limit=8 * MiB, source=from_snapshot(snap.snapshot_id)
        ),
    )
    await fails(
        Status.OUT_OF_RANGE,
        create(driver, "c3", required=8 * MiB, limit=8 * MiB, source=from_volume(source.volume_id)),
    )
    small = await create(driver, "r4", required=8 * MiB, source=from_snapshot(snap.snapshot_id))
    assert small.capacity_bytes == 16 * MiB
    assert small.content_source == from_snapshot(snap.snapshot_id)
    assert await list_all_volume_ids(driver) == [source.volume_id, small.volume_id]


async def test_snapshot_restore_clone_round_trip(driver: Driver) -> None:
    source = await create(driver, "origin", required=16 * MiB)
    chunks = {
        0: os.urandom(4096),
        MiB + 17: os.urandom(1000),
        8 * MiB - 5: os.urandom(10),
        16 * MiB - 4096: os.urandom(4096),
    }
    await write_at(image(driver, source.volume_id), chunks)
    at_snapshot = await read_all(image(driver, source.volume_id))
    assert len(at_snapshot) == 16 * MiB
    snap = await snapshot(driver, "origin-snap", source.volume_id)
    assert await read_all(snapshot_image(driver, snap.snapshot_id)) == at_snapshot

    # Later writes to the source do not reach the snapshot.
    overwrite = {offset: b"\xff" * len(data) for offset, data in chunks.items()}
    await write_at(image(driver, source.volume_id), overwrite)

    restored = await create(
        driver, "restored", required=24 * MiB, source=from_snapshot(snap.snapshot_id)
    )
    assert restored.capacity_bytes == 24 * MiB
    restored_bytes = await read_all(image(driver, restored.volume_id))
    assert len(restored_bytes) == 24 * MiB
    # startswith/endswith compare in place: slicing copies of tens of MiB would hold the
    # GIL (and so the driver's loop) for tens of ms, in whatever thread they ran.
    assert restored_bytes.startswith(at_snapshot)
    assert restored_bytes.endswith(bytes(8 * MiB))
    for offset, data in chunks.items():
        assert restored_bytes[offset : offset + len(data)] == data

    clone = await create(driver, "clone", required=0, source=from_volume(restored.volume_id))
    assert clone.capacity_bytes == 64 * MiB  # the default size, which holds the source
    clone_bytes = await read_all(image(driver, clone.volume_id))
    assert len(clone_bytes) == 64 * MiB
    assert clone_bytes.startswith(restored_bytes)
    assert clone_bytes.endswith(bytes(40 * MiB))
    assert clone.content_source == from_volume(restored.volume_id)

    # Retries are idempotent and leave the data alone.
    again = await create(driver, "clone", required=0, source=from_volume(restored.volume_id))
    assert again.volume_id == clone.volume_id
    # A clone of a live source carries its current content, not the snapshot's.
    live = await create(driver, "live", required=16 * MiB, source=from_volume(source.volume_id))
    assert await read_all(image(driver, live.volume_id)) == await read_all(
        image(driver, source.volume_id)
    )
    # A preallocated clone really has its blocks.
    full = await create(
        driver,
        "full-clone",
        required=32 * MiB,
        source=from_volume(source.volume_id),
        params={"preallocate": "true"},
    )
    assert allocated(image(driver, full.volume_id)) >= 32 * MiB
    assert (await read_all(image(driver, full.volume_id))).startswith(
        await read_all(image(driver, source.volume_id))
    )


# -- pool exhaustion ----------------------------------------------------------------------


@asynccontextmanager
async def small_filesystem(root: Path, size: int) -> AsyncIterator[Path]:
    """A fresh ext4 of `size` bytes mounted under `root` (no reflink: copies are real)."""
    backing, mount_point = root / "small.img", root / "small"
    with backing.open("wb") as handle:
        handle.truncate(size)
    mount_point.mkdir()
    await anyio.run_process(["mkfs.ext4", "-q", "-F", "-m", "0", str(backing)])
    await anyio.run_process(["mount", "-o", "loop", str(backing), str(mount_point)])
    try:
        yield mount_point
    finally:
        await anyio.run_process(["umount", str(mount_point)])


async def test_pool_exhaustion_leaves_nothing_behind(cleanup: Path) -> None:
    async with small_filesystem(cleanup, 64 * MiB) as fs_root:
        config = driver_config(cleanup, pool=fs_root / "pool", overcommit=2.0)
        async with running_driver(config, cleanup) as d:
            budget = await offered_between(d, 2.0, 0)

            # The overcommit budget: a volume beyond it is refused up front.
            await fails(Status.RESOURCE_EXHAUSTED, create(d, "huge", required=budget + MiB))
            data = await create(d, "data", required=40 * MiB)
            # A new sparse volume holds nothing yet: all of it may still be allocated.
            left = await offered_between(d, 2.0, 40 * MiB)

            # Concurrent creates never overshoot the budget together.
            size = 30 * MiB
            results = await asyncio.gather(
                *(create(d, f"race-{i}", required=size) for i in range(5)),
                return_exceptions=True,
            )
            made = [r for r in results if isinstance(r, csi.Volume)]
            refused = [r for r in results if isinstance(r, GRPCError)]
            assert len(made) == left // size
            assert all(r.status is Status.RESOURCE_EXHAUSTED for r in refused)
            assert len(made) + len(refused) == len(results)
            for volume in made:
                await delete(d, volume.volume_id)

            # A preallocated volume must fit on the disk, not just under the budget.
            await fails(
                Status.RESOURCE_EXHAUSTED,
                create(d, "prealloc", required=60 * MiB, params={"preallocate": "true"}),
            )

            # Real ENOSPC half way through a copy: clone and snapshot of 36 MiB of data.
            # 36 MiB of random bytes take ~80 ms to make: not on the loop the driver uses.
            chunks = await asyncio.to_thread(lambda: {i * MiB: os.urandom(MiB) for i in range(36)})
            await write_at(image(d, data.volume_id), chunks)
            free_before = free_bytes(d.pool)
            assert free_before < 36 * MiB
            await fails(
                Status.RESOURCE_EXHAUSTED,
                create(d, "clone", required=40 * MiB, source=from_volume(data.volume_id)),
            )
            await fails(Status.RESOURCE_EXHAUSTED, snapshot(d, "snap", data.volume_id))
            # Only the database may have grown a little: no partial copy is left.
            assert free_bytes(d.pool) > free_before - MiB
            assert [p.name for p in (d.pool / "volumes").iterdir()] == [f"{data.volume_id}.img"]
            assert list((d.pool / "snapshots").iterdir()) == []
            assert await list_all_volume_ids(d) == [data.volume_id]
            listed = await d.client.controller.list_snapshots(csi.ListSnapshotsRequest())
            assert listed.entries == []
            # The failed copies are forgotten: the same names work once there is room.
            await delete(d, data.volume_id)
            retried = await create(d, "clone", required=8 * MiB)
            assert await list_all_volume_ids(d) == [retried.volume_id]
            await delete(d, retried.volume_id)


# -- DeleteVolume -------------------------------------------------------------------------


async def test_delete_volume(driver: Driver) -> None:
    volume = await create(driver, "doomed")
    path = image(driver, volume.volume_id)
    assert path.exists()
    await delete(driver, volume.volume_id)
    await delete(driver, volume.volume_id)
    assert not path.exists()
    await fails(Status.NOT_FOUND, get_volume(driver, volume.volume_id))
    assert await list_all_volume_ids(driver) == []
    # Ids we never issued, or that name nothing, are already gone.
    for garbage in ("vol-" + "f" * 32, "nonsense", "../../etc/passwd", "vol-XYZ"):
        await delete(driver, garbage)
    await fails(Status.INVALID_ARGUMENT, delete(driver, ""))
    # The name is free again and gets a new volume.
    reborn = await create(driver, "doomed")
    assert reborn.volume_id != volume.volume_id


async def test_delete_volume_in_use_is_refused(driver: Driver) -> None:
    mounted = await create(driver, "staged-mount", required=16 * MiB)
    block = await create(driver, "staged-block", caps=[block_capability()])
    mount_at, block_at = driver.root / "stage-mount", driver.root / "stage-block"
    await stage(driver, mounted.volume_id, mount_at, mount_capability())
    try:
        await stage(driver, block.volume_id, block_at, block_capability())
        try:
            for volume in (mounted, block):
                message = await fails(Status.FAILED_PRECONDITION, delete(driver, volume.volume_id))
                assert volume.volume_id in message
                assert image(driver, volume.volume_id).exists()
                status = (await get_volume(driver, volume.volume_id)).status
                assert status is not None
                assert status.published_node_ids == [NODE]
            listed = await driver.client.controller.list_volumes(csi.ListVolumesRequest())
            assert [e.status.published_node_ids for e in listed.entries if e.status] == [
                [NODE],
                [NODE],
            ]
        finally:
            await unstage(driver, block.volume_id, block_at)
    finally:
        await unstage(driver, mounted.volume_id, mount_at)
    for volume in (mounted, block):
        await delete(driver, volume.volume_id)
        assert not image(driver, volume.volume_id).exists()


# -- ValidateVolumeCapabilities -----------------------------------------------------------


async def test_validate_volume_capabilities(driver: Driver) -> None:
    volume = await create(driver, "v", params={"preallocate": "false"})
    validate = driver.client.controller.validate_volume_capabilities

    caps = [mount_capability(flags=("noatime",)), block_capability(Mode.SINGLE_NODE_READER_ONLY)]
    ok = await validate(
        csi.ValidateVolumeCapabilitiesRequest(
            volume_id=volume.volume_id,
            volume_capabilities=caps,
            parameters={"preallocate": "false"},
            volume_context={"a": "b"},
        )
    )
    assert ok.confirmed is not None
    assert ok.confirmed.volume_capabilities == caps
    assert ok.confirmed.parameters == {"preallocate": "false"}
    assert ok.confirmed.volume_context == {"a": "b"}

    refused = {
        "multi-node": {
            "volume_capabilities": [mount_capability(mode=Mode.MULTI_NODE_MULTI_WRITER)]
        },
        "unknown fs": {"volume_capabilities": [mount_capability("zfs")]},
        "unsafe mount flag": {"volume_capabilities": [mount_capability(flags=("remount",))]},
        "too small for xfs": {"volume_capabilities": [mount_capability("xfs")]},
        "other parameters": {"volume_capabilities": caps, "parameters": {"preallocate": "true"}},
        "unknown parameter": {"volume_capabilities": caps, "parameters": {"x": "y"}},
    }
    for what, fields in refused.items():
        response = await validate(
            csi.ValidateVolumeCapabilitiesRequest(volume_id=volume.volume_id, **fields)  # type: ignore[arg-type]
        )
        assert response.confirmed is None, what
        assert response.message, what

    await fails(
        Status.NOT_FOUND,
        validate(
            csi.ValidateVolumeCapabilitiesRequest(
                volume_id="vol-" + "1" * 32, volume_capabilities=caps
            )
        ),
    )
    await fails(
        Status.INVALID_ARGUMENT,
        validate(csi.ValidateVolumeCapabilitiesRequest(volume_id=volume.volume_id)),
    )
    await fails(
        Status.INVALID_ARGUMENT,
        validate(csi.ValidateVolumeCapabilitiesRequest(volume_id="vol-" + "1" * 32)),
    )
    await fails(
        Status.INVALID_ARGUMENT,
        validate(csi.ValidateVolumeCapabilitiesRequest(volume_capabilities=caps)),
    )


# -- ControllerGetVolume and ListVolumes --------------------------------------------------


async def test_a_delete_cut_short_after_the_image_went_finishes_on_retry(driver: Driver) -> None:
    # What a crash between removing the image and removing the record leaves behind.
    volume = await create(driver, "half-deleted", required=0)
    image(driver, volume.volume_id).unlink()
    await driver.client.controller.delete_volume(
        csi.DeleteVolumeRequest(volume_id=volume.volume_id)
    )
    listed = await driver.client.controller.list_volumes(csi.ListVolumesRequest())
    assert [entry.volume.volume_id for entry in listed.entries if entry.volume] == []


async def test_controller_get_volume_reports_condition(driver: Driver) -> None:
    healthy, truncated, missing = [
        await create(driver, name, required=0) for name in ("healthy", "truncated", "missing")
    ]
    os.truncate(image(driver, truncated.volume_id), 4 * MiB)
    image(driver, missing.volume_id).unlink()

    expected = {healthy.volume_id: False, truncated.volume_id: True, missing.volume_id: True}
    for volume_id, abnormal in expected.items():
        response = await get_volume(driver, volume_id)
        assert response.volume is not None
        assert response.volume.volume_id == volume_id
        assert response.volume.capacity_bytes == 64 * MiB
        assert response.volume.accessible_topology == [topology(NODE)]
        assert response.status is not None
        assert response.status.published_node_ids == []
        condition = response.status.volume_condition
        assert condition is not None
        assert condition.abnormal is abnormal, condition.message
        assert condition.message
    condition = (await get_volume(driver, truncated.volume_id)).status.volume_condition  # type: ignore[union-attr]
    assert "truncated" in condition.message  # type: ignore[union-attr]
    condition = (await get_volume(driver, missing.volume_id)).status.volume_condition  # type: ignore[union-attr]
    assert "missing" in condition.message  # type: ignore[union-attr]

    listed = await driver.client.controller.list_volumes(csi.ListVolumesRequest())
    by_id = {e.volume.volume_id: e.status for e in listed.entries if e.volume is not None}
    for volume_id, abnormal in expected.items():
        status = by_id[volume_id]
        assert status is not None
        assert status.volume_condition is not None
        assert status.volume_condition.abnormal is abnormal

    await fails(Status.NOT_FOUND, get_volume(driver, "vol-" + "2" * 32))
    await fails(Status.NOT_FOUND, get_volume(driver, "garbage"))
    await fails(Status.INVALID_ARGUMENT, get_volume(driver, ""))
    # A volume whose image vanished can still be deleted.
    await delete(driver, missing.volume_id)
    await fails(Status.NOT_FOUND, get_volume(driver, missing.volume_id))


async def test_list_volumes_pages_in_a_stable_order(driver: Driver) -> None:
    ids = [(await create(driver, f"list-{i}")).volume_id for i in range(7)]
    assert await list_all_volume_ids(driver) == ids
    assert await list_all_volume_ids(driver) == ids

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        response = await driver.client.controller.list_volumes(
            csi.ListVolumesRequest(max_entries=3, starting_token=token)
        )
        assert len(response.entries) <= 3
        seen += [e.volume.volume_id for e in response.entries if e.volume is not None]
        pages += 1
        token = response.next_token
        if not token:
            break
    assert seen == ids
    assert pages == 3
    # max_entries larger than the list: everything, and no token.
    response = await driver.client.controller.list_volumes(csi.ListVolumesRequest(max_entries=50))
    assert len(response.entries) == 7
    assert response.next_token == ""

    for bad in ("abc", "-1", "0", "007", "99999", "1e3", "²", " 3", "3 ", "9" * 40):
        await fails(
            Status.ABORTED,
            driver.client.controller.list_volumes(csi.ListVolumesRequest(starting_token=bad)),
        )
    await fails(
        Status.INVALID_ARGUMENT,
        driver.client.controller.list_volumes(csi.ListVolumesRequest(max_entries=-1)),
    )


async def test_list_volumes_under_concurrent_create_and_delete(driver: Driver) -> None:
    throughout = [(await create(driver, f"stay-{i}")).volume_id for i in range(12)]
    churn = [(await create(driver, f"churn-{i}")).volume_id for i in range(6)]
    # Interleave the churn with the stable volumes' positions in the order.
    throughout += [(await create(driver, f"stay-late-{i}")).volume_id for i in range(4)]

    seen: list[str] = []
    token = ""
    step = 0
    while True:
        page = driver.client.controller.list_volumes(
            csi.ListVolumesRequest(max_entries=4, starting_token=token)
        )
        work: list[Awaitable[object]] = [create(driver, f"new-{step}")]
        if churn:
            work.append(delete(driver, churn.pop(0)))
        response, *_ = await asyncio.gather(page, *work)
        assert isinstance(response, csi.ListVolumesResponse)
        seen += [e.volume.volume_id for e in response.entries if e.volume is not None]
        token = response.next_token
        step += 1
        if not token:
            break
        assert step < 50, "pagination does not terminate"
    assert len(seen) == len(set(seen)), "a volume was listed twice"
    missing = set(throughout) - set(seen)
    assert not missing, f"volumes that existed throughout were skipped: {missing}"


# -- GetCapacity --------------------------------------------------------------------------


async def test_get_capacity(cleanup: Path) -> None:
    config = driver_config(cleanup, overcommit=0.5)
    async with running_driver(config, cleanup) as d:
        base = await capacity(d)
        await offered_between(d, 0.5, 0)
        assert base.maximum_volume_size == base.available_capacity
        assert base.minimum_volume_size == MiB

        await create(d, "a", required=32 * MiB)
        await offered_between(d, 0.5, 32 * MiB)
        snap_source = await create(d, "b", required=16 * MiB)
        await snapshot(d, "b-snap", snap_source.volume_id)
        # Snapshots are images of their own and count against the pool too.
        await offered_between(d, 0.5, 64 * MiB)
        await offered_between(d, 0.5, 64 * MiB, accessible_topology=topology(NODE))
        elsewhere = await capacity(d, accessible_topology=topology("node-b"))
        assert elsewhere.available_capacity == 0
        foreign = await capacity(d, accessible_topology=csi.Topology(segments={"zone": "a"}))
        assert foreign.available_capacity == 0

        xfs = await capacity(d, volume_capabilities=[mount_capability("xfs")])
        assert xfs.minimum_volume_size == 300 * MiB
        ext4 = await capacity(d, volume_capabilities=[mount_capability("ext4")])
        assert ext4.minimum_volume_size == 4 * MiB
        block = await capacity(d, volume_capabilities=[block_capability()])
        assert block.minimum_volume_size == MiB

        # Preallocated volumes need real free space, whatever the overcommit ratio says.
        free_before = free_bytes(d.pool)
        preallocated = await capacity(d, parameters={"preallocate": "true"})
        free = max(free_before, free_bytes(d.pool)) + MiB  # others may write to this disk
        assert preallocated.available_capacity <= min(free, int(free * 0.5) - 64 * MiB)

        await fails(Status.INVALID_ARGUMENT, capacity(d, parameters={"nope": "1"}))
        await fails(
            Status.INVALID_ARGUMENT,
            capacity(d, volume_capabilities=[mount_capability(mode=Mode.MULTI_NODE_MULTI_WRITER)]),
        )


# -- ControllerExpandVolume ---------------------------------------------------------------


async def test_controller_expand_volume(driver: Driver) -> None:
    expand = driver.client.controller.controller_expand_volume
    volume = await create(driver, "grow", required=8 * MiB)

    def request(
        required: int,
        limit: int = 0,
        cap: csi.VolumeCapability | None = None,
        volume_id: str = volume.volume_id,
    ) -> csi.ControllerExpandVolumeRequest:
        return csi.ControllerExpandVolumeRequest(
            volume_id=volume_id,
            capacity_range=csi.CapacityRange(required_bytes=required, limit_bytes=limit),
            volume_capability=cap,
        )

    for _ in range(2):
        grown = await expand(request(16 * MiB, cap=mount_capability()))
        assert grown.capacity_bytes == 16 * MiB
        assert grown.node_expansion_required is True
    assert image(driver, volume.volume_id).stat().st_size == 16 * MiB
    got = await get_volume(driver, volume.volume_id)
    assert got.volume is not None
    assert got.volume.capacity_bytes == 16 * MiB
    # A smaller request is already satisfied; a limit below the size is a shrink.
    same = await expand(request(10 * MiB))
    assert same.capacity_bytes == 16 * MiB
    await fails(Status.OUT_OF_RANGE, expand(request(8 * MiB, limit=8 * MiB)))
    assert image(driver, volume.volume_id).stat().st_size == 16 * MiB
    rounded = await expand(request(20 * MiB + 1))
    assert rounded.capacity_bytes == 21 * MiB

    # A block volume that is not attached anywhere needs nothing from the node.
    raw = await create(driver, "raw", caps=[block_capability()])
    grown = await expand(request(12 * MiB, cap=block_capability(), volume_id=raw.volume_id))
    assert grown.capacity_bytes == 12 * MiB
    assert grown.node_expansion_required is False

    # Preallocated volumes stay preallocated when they grow.
    full = await create(driver, "full", required=8 * MiB, params={"preallocate": "true"})
    await expand(request(24 * MiB, volume_id=full.volume_id))
    assert allocated(image(driver, full.volume_id)) >= 24 * MiB

    await fails(Status.NOT_FOUND, expand(request(16 * MiB, volume_id="vol-" + "3" * 32)))
    await fails(Status.INVALID_ARGUMENT, expand(request(16 * MiB, volume_id="")))
    await fails(
        Status.INVALID_ARGUMENT,
        expand(csi.ControllerExpandVolumeRequest(volume_id=volume.volume_id)),
    )
    await fails(Status.INVALID_ARGUMENT, expand(request(32 * MiB, limit=16 * MiB)))


# -- ControllerModifyVolume ---------------------------------------------------------------


async def test_controller_modify_volume(driver: Driver) -> None:
    modify = driver.client.controller.controller_modify_volume
    volume = await create(driver, "mod", required=16 * MiB)
    path = image(driver, volume.volume_id)
    await write_at(path, {MiB: b"keep me"})
    assert allocated(path) < MiB

    for _ in range(2):
        await modify(
            csi.ControllerModifyVolumeRequest(
                volume_id=volume.volume_id, mutable_parameters={"preallocate": "true"}
            )
        )
        assert allocated(path) >= 16 * MiB
    assert path.stat().st_size == 16 * MiB
    assert (await read_all(path))[MiB : MiB + 7] == b"keep me"
    # Growth after the change is preallocated too.
    await driver.client.controller.controller_expand_volume(
        csi.ControllerExpandVolumeRequest(
            volume_id=volume.volume_id, capacity_range=csi.CapacityRange(required_bytes=24 * MiB)
        )
    )
    assert allocated(path) >= 24 * MiB
    await modify(
        csi.ControllerModifyVolumeRequest(
            volume_id=volume.volume_id, mutable_parameters={"preallocate": "false"}
        )
    )

    await fails(
        Status.INVALID_ARGUMENT,
        modify(
            csi.ControllerModifyVolumeRequest(
                volume_id=volume.volume_id, mutable_parameters={"iops": "5"}
            )
        ),
    )
    await fails(
        Status.INVALID_ARGUMENT,
        modify(
            csi.ControllerModifyVolumeRequest(
                volume_id=volume.volume_id, mutable_parameters={"preallocate": "sometimes"}
            )
        ),
    )
    await fails(
        Status.INVALID_ARGUMENT,
        modify(csi.ControllerModifyVolumeRequest(mutable_parameters={"preallocate": "true"})),
    )
    await fails(
        Status.NOT_FOUND,
        modify(
            csi.ControllerModifyVolumeRequest(
                volume_id="vol-" + "4" * 32, mutable_parameters={"preallocate": "true"}
            )
        ),
    )


# -- snapshots ----------------------------------------------------------------------------


async def test_create_get_delete_snapshot(driver: Driver) -> None:
    ctl = driver.client.controller
    source = await create(driver, "snap-src", required=12 * MiB)
    other = await create(driver, "snap-other")
    before = dt.datetime.now(tz=dt.UTC).replace(microsecond=0)
    first = await snapshot(driver, "s1", source.volume_id)
    after = dt.datetime.now(tz=dt.UTC)
    assert first.ready_to_use is True
    assert first.size_bytes == 12 * MiB
    assert first.source_volume_id == source.volume_id
    assert first.creation_time is not None
    assert before <= first.creation_time <= after
    assert snapshot_image(driver, first.snapshot_id).stat().st_size == 12 * MiB

    again = await snapshot(driver, "s1", source.volume_id)
    assert again == first
    # Concurrent retries of one CreateSnapshot join and make one snapshot.
    joined = await asyncio.gather(*(snapshot(driver, "s2", source.volume_id) for _ in range(4)))
    assert len({s.snapshot_id for s in joined}) == 1
    await fails(Status.ALREADY_EXISTS, snapshot(driver, "s1", other.volume_id))
    await fails(Status.NOT_FOUND, snapshot(driver, "s3", "vol-" + "5" * 32))
    await fails(Status.INVALID_ARGUMENT, snapshot(driver, "", source.volume_id))
    await fails(Status.INVALID_ARGUMENT, snapshot(driver, "s3", ""))
    await fails(
        Status.INVALID_ARGUMENT,
        ctl.create_snapshot(
            csi.CreateSnapshotRequest(
                name="s3", source_volume_id=source.volume_id, parameters={"x": "y"}
            )
        ),
    )

    got = await ctl.get_snapshot(csi.GetSnapshotRequest(snapshot_id=first.snapshot_id))
    assert got.snapshot == first
    await fails(
        Status.NOT_FOUND, ctl.get_snapshot(csi.GetSnapshotRequest(snapshot_id="snap-" + "6" * 32))
    )
    await fails(Status.NOT_FOUND, ctl.get_snapshot(csi.GetSnapshotRequest(snapshot_id="junk")))
    await fails(Status.INVALID_ARGUMENT, ctl.get_snapshot(csi.GetSnapshotRequest()))

    # A snapshot outlives its source volume.
    third = await snapshot(driver, "s3", other.volume_id)
    await delete(driver, other.volume_id)
    got = await ctl.get_snapshot(csi.GetSnapshotRequest(snapshot_id=third.snapshot_id))
    assert got.snapshot == third

    for _ in range(2):
        await ctl.delete_snapshot(csi.DeleteSnapshotRequest(snapshot_id=first.snapshot_id))
    assert not snapshot_image(driver, first.snapshot_id).exists()
    await fails(
        Status.NOT_FOUND, ctl.get_snapshot(csi.GetSnapshotRequest(snapshot_id=first.snapshot_id))
    )
    await fails(
        Status.NOT_FOUND, create(driver, "from-gone", source=from_snapshot(first.snapshot_id))
    )
    await ctl.delete_snapshot(csi.DeleteSnapshotRequest(snapshot_id="snap-" + "9" * 32))
    await ctl.delete_snapshot(csi.DeleteSnapshotRequest(snapshot_id="../etc"))
    await fails(Status.INVALID_ARGUMENT, ctl.delete_snapshot(csi.DeleteSnapshotRequest()))
    # The name is free again.
    reborn = await snapshot(driver, "s1", source.volume_id)
    assert reborn.snapshot_id != first.snapshot_id


async def test_list_snapshots(driver: Driver) -> None:
    ctl = driver.client.controller
    source = await create(driver, "snap-src")
    other = await create(driver, "snap-other")
    everything = [
        (await snapshot(driver, name, volume.volume_id)).snapshot_id
        for name, volume in (("s1", source), ("s2", source), ("s3", other))
    ]

    async def listed(**kwargs: object) -> list[str]:
        response = await ctl.list_snapshots(csi.ListSnapshotsRequest(**kwargs))  # type: ignore[arg-type]
        return [e.snapshot.snapshot_id for e in response.entries if e.snapshot is not None]

    assert await listed() == everything
    assert await listed(snapshot_id=everything[1]) == [everything[1]]
    assert await listed(snapshot_id="snap-" + "7" * 32) == []
    assert await listed(snapshot_id="junk") == []
    assert await listed(source_volume_id=source.volume_id) == everything[:2]
    assert await listed(source_volume_id=other.volume_id) == [everything[2]]
    assert await listed(source_volume_id="vol-" + "8" * 32) == []
    assert await listed(source_volume_id=other.volume_id, snapshot_id=everything[0]) == []

    pages: list[str] = []
    token = ""
    while True:
        response = await ctl.list_snapshots(
            csi.ListSnapshotsRequest(max_entries=2, starting_token=token)
        )
        assert len(response.entries) <= 2
        pages += [e.snapshot.snapshot_id for e in response.entries if e.snapshot is not None]
        token = response.next_token
        if not token:
            break
    assert pages == everything
    for bad in ("nope", "-2", "123456789", "²"):
        await fails(
            Status.ABORTED, ctl.list_snapshots(csi.ListSnapshotsRequest(starting_token=bad))
        )
    await fails(
        Status.INVALID_ARGUMENT, ctl.list_snapshots(csi.ListSnapshotsRequest(max_entries=-1))
    )

    # Deleted snapshots leave the list; the others keep their order.
    await ctl.delete_snapshot(csi.DeleteSnapshotRequest(snapshot_id=everything[0]))
    assert await listed() == everything[1:]


# -- ControllerPublish / Unpublish --------------------------------------------------------


async def test_controller_publish_with_attach(cleanup: Path) -> None:
    config = driver_config(cleanup, enable_attach=True, max_volumes_per_node=2)
    async with running_driver(config, cleanup) as d:
        ctl = d.client.controller
        response = await ctl.controller_get_capabilities(csi.ControllerGetCapabilitiesRequest())
        assert {c.rpc.type for c in response.capabilities if c.rpc is not None} == (
            ALWAYS | WITH_ATTACH
        )
        volumes = [await create(d, name) for name in "abc"]

        def publish(
            volume_id: str,
            node: str = NODE,
            readonly: bool = False,
            cap: csi.VolumeCapability | None = None,
        ) -> Awaitable[object]:
            return ctl.controller_publish_volume(
                csi.ControllerPublishVolumeRequest(
                    volume_id=volume_id,
                    node_id=node,
                    readonly=readonly,
                    volume_capability=cap or mount_capability(),
                )
            )

        def unpublish(volume_id: str, node: str = NODE) -> Awaitable[object]:
            return ctl.controller_unpublish_volume(
                csi.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id=node)
            )

        for _ in range(2):
            await publish(volumes[0].volume_id)
        status = (await get_volume(d, volumes[0].volume_id)).status
        assert status is not None
        assert status.published_node_ids == [NODE]
        await fails(Status.ALREADY_EXISTS, publish(volumes[0].volume_id, readonly=True))
        await fails(Status.ALREADY_EXISTS, publish(volumes[0].volume_id, cap=block_capability()))
        await fails(Status.NOT_FOUND, publish(volumes[1].volume_id, node="node-b"))
        await fails(Status.NOT_FOUND, publish("vol-" + "a" * 32))
        await fails(Status.INVALID_ARGUMENT, publish(""))
        await fails(Status.INVALID_ARGUMENT, publish(volumes[1].volume_id, node=""))
        await fails(
            Status.INVALID_ARGUMENT,
            ctl.controller_publish_volume(
                csi.ControllerPublishVolumeRequest(volume_id=volumes[1].volume_id, node_id=NODE)
            ),
        )
        # A published volume is in use.
        await fails(Status.FAILED_PRECONDITION, delete(d, volumes[0].volume_id))

        await publish(volumes[1].volume_id, readonly=True)
        await fails(Status.RESOURCE_EXHAUSTED, publish(volumes[2].volume_id))

        for _ in range(2):
            await unpublish(volumes[0].volume_id)
        status = (await get_volume(d, volumes[0].volume_id)).status
        assert status is not None
        assert status.published_node_ids == []
        await publish(volumes[2].volume_id)
        await unpublish(volumes[2].volume_id, node="")  # empty node: from every node
        await unpublish("vol-" + "b" * 32)
        await unpublish(volumes[1].volume_id, node="node-b")
        status = (await get_volume(d, volumes[1].volume_id)).status
        assert status is not None
        assert status.published_node_ids == [NODE]
        await fails(Status.INVALID_ARGUMENT, unpublish(""))
        await unpublish(volumes[1].volume_id)
        for volume in volumes:
            await delete(d, volume.volume_id)
        assert await list_all_volume_ids(d) == []


# -- restart ------------------------------------------------------------------------------


async def test_restart_keeps_every_record(cleanup: Path) -> None:
    config = driver_config(cleanup, enable_attach=True)
    async with running_driver(config, cleanup) as d:
        plain = await create(d, "plain", required=8 * MiB, params={"preallocate": "false"})
        await write_at(image(d, plain.volume_id), {123: b"persist"})
        snap = await snapshot(d, "snap", plain.volume_id)
        restored = await create(d, "restored", source=from_snapshot(snap.snapshot_id))
        grown = await create(d, "grown", required=8 * MiB)
        await d.client.controller.controller_expand_volume(
            csi.ControllerExpandVolumeRequest(
                volume_id=grown.volume_id, capacity_range=csi.CapacityRange(required_bytes=32 * MiB)
            )
        )
        await d.client.controller.controller_modify_volume(
            csi.ControllerModifyVolumeRequest(
                volume_id=grown.volume_id, mutable_parameters={"preallocate": "true"}
            )
        )
        await d.client.controller.controller_publish_volume(
            csi.ControllerPublishVolumeRequest(
                volume_id=restored.volume_id, node_id=NODE, volume_capability=mount_capability()
            )
        )
        volumes_before = await d.client.controller.list_volumes(csi.ListVolumesRequest())
        snapshots_before = await d.client.controller.list_snapshots(csi.ListSnapshotsRequest())
        free_before = free_bytes(d.pool)
        # What the driver counts as still to be allocated by its images (free x 1.0 - offer).
        unallocated = free_before - (await capacity(d)).available_capacity

    async with running_driver(config, cleanup) as d:
        assert await d.client.controller.list_volumes(csi.ListVolumesRequest()) == volumes_before
        assert (
            await d.client.controller.list_snapshots(csi.ListSnapshotsRequest()) == snapshots_before
        )
        await offered_between(d, 1.0, unallocated)
        status = (await get_volume(d, restored.volume_id)).status
        assert status is not None
        assert status.published_node_ids == [NODE]
        # Idempotency survives the restart: same names, same volumes and snapshots.
        assert (
            await create(d, "plain", required=8 * MiB, params={"preallocate": "false"})
        ).volume_id == plain.volume_id
        assert (await snapshot(d, "snap", plain.volume_id)) == snap
        assert (await read_all(image(d, plain.volume_id)))[123:130] == b"persist"
        # The modified parameter is still in force: growth is preallocated.
        await d.client.controller.controller_expand_volume(
            csi.ControllerExpandVolumeRequest(
                volume_id=grown.volume_id, capacity_range=csi.CapacityRange(required_bytes=40 * MiB)
            )
        )
        assert allocated(image(d, grown.volume_id)) >= 40 * MiB
        await d.client.controller.controller_unpublish_volume(
            csi.ControllerUnpublishVolumeRequest(volume_id=restored.volume_id, node_id=NODE)
        )


async def test_controller_expansion_can_be_turned_off_for_node_local_deployments(
    cleanup: Path,
) -> None:
    config = driver_config(cleanup, controller_expand=False)
    async with running_driver(config, cleanup) as drv:
        response = await drv.client.controller.controller_get_capabilities(
            csi.ControllerGetCapabilitiesRequest()
        )
        rpcs = {c.rpc.type for c in response.capabilities if c.rpc is not None}
        assert rpcs == ALWAYS - {Rpc.EXPAND_VOLUME}
        volume = await create(drv, "no-expand")
        await fails(
            Status.UNIMPLEMENTED,
            drv.client.controller.controller_expand_volume(
                csi.ControllerExpandVolumeRequest(
                    volume_id=volume.volume_id,
                    capacity_range=csi.CapacityRange(required_bytes=64 * MiB),
                )
            ),
        )


async def test_validate_confirms_flags_the_operator_allowed(cleanup: Path) -> None:
    cap = mount_capability(flags=("exec",))
    config = driver_config(cleanup, allowed_mount_flags=frozenset({"exec"}))
    async with running_driver(config, cleanup) as drv:
        volume = await create(drv, "operator-flag")
        reply = await drv.client.controller.validate_volume_capabilities(
            csi.ValidateVolumeCapabilitiesRequest(
                volume_id=volume.volume_id, volume_capabilities=[cap]
            )
        )
        assert reply.confirmed is not None, reply.message
    async with running_driver(driver_config(cleanup), cleanup) as drv:
        reply = await drv.client.controller.validate_volume_capabilities(
            csi.ValidateVolumeCapabilitiesRequest(
                volume_id=volume.volume_id, volume_capabilities=[cap]
            )
        )
        assert reply.confirmed is None
        assert "exec" in reply.message
