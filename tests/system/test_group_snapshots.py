"""The GroupController service over the real socket: what csi-test's groupcontroller.go
checks, and the rest of CSI's group snapshot contract, on real volumes staged in mount
and in block mode."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from grpclib.const import Status

from aiocsi._proto.csi import v1 as csi
from aiocsi.config import Mode as DriverMode

from .conftest import Driver, driver_config, running_driver
from .groups import (
    create_group,
    delete_group,
    get_group,
    install_group_seam,
    member_ids,
    stub,
)
from .test_controller import create, from_snapshot, snapshot, snapshot_image
from .test_node import Vol, cap_for, fails, new_volume

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.system
MiB = 1024 * 1024
Rpc = csi.GroupControllerServiceCapabilityRpcType


async def two_staged(d: Driver, kind: str) -> tuple[Vol, Vol]:
    a = await new_volume(d, f"a-{kind}", cap_for(kind))
    b = await new_volume(d, f"b-{kind}", cap_for(kind))
    await a.stage()
    await b.stage()
    return a, b


async def test_capabilities(driver: Driver) -> None:
    reply = await stub(driver).group_controller_get_capabilities(
        csi.GroupControllerGetCapabilitiesRequest()
    )
    assert [c.rpc.type for c in reply.capabilities if c.rpc] == [
        Rpc.CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT
    ]


async def test_node_mode_does_not_serve_it(cleanup: Path) -> None:
    config = driver_config(cleanup, mode=DriverMode.NODE)
    async with running_driver(config, cleanup) as d:
        await fails(
            Status.UNIMPLEMENTED,
            stub(d).group_controller_get_capabilities(csi.GroupControllerGetCapabilitiesRequest()),
        )


async def test_bad_requests(driver: Driver) -> None:
    s = stub(driver)
    vol = await create(driver, "v")
    bad = [
        csi.CreateVolumeGroupSnapshotRequest(source_volume_ids=[vol.volume_id]),
        csi.CreateVolumeGroupSnapshotRequest(name="g"),
        csi.CreateVolumeGroupSnapshotRequest(name="g", source_volume_ids=[vol.volume_id] * 2),
        csi.CreateVolumeGroupSnapshotRequest(name="g", source_volume_ids=[""]),
        csi.CreateVolumeGroupSnapshotRequest(
            name="g", source_volume_ids=[vol.volume_id], parameters={"no": "such"}
        ),
    ]
    for request in bad:
        await fails(Status.INVALID_ARGUMENT, s.create_volume_group_snapshot(request))
    await fails(
        Status.NOT_FOUND,
        create_group(driver, "g", [vol.volume_id, "vol-" + "0" * 32]),
    )
    await fails(
        Status.INVALID_ARGUMENT, s.get_volume_group_snapshot(csi.GetVolumeGroupSnapshotRequest())
    )
    for unknown in ("no-such-group", "group-" + "0" * 32):
        await fails(Status.NOT_FOUND, get_group(driver, unknown))
        await delete_group(driver, unknown, [])  # unknown: OK
    await fails(
        Status.INVALID_ARGUMENT,
        s.delete_volume_group_snapshot(csi.DeleteVolumeGroupSnapshotRequest()),
    )
    assert not list((driver.pool / "snapshots").glob("*.img"))


@pytest.mark.parametrize("kind", ["ext4", "block"])
async def test_group_lifecycle(driver: Driver, kind: str) -> None:
    a, b = await two_staged(driver, kind)
    c = await new_volume(driver, f"c-{kind}", cap_for(kind))  # not staged: taken as it is
    sources = [a.id, b.id, c.id]
    group = await create_group(driver, "g1", sources)
    assert group.ready_to_use
    assert group.group_snapshot_id.startswith("group-")
    assert sorted(s.source_volume_id for s in group.snapshots) == sorted(sources)
    for member in group.snapshots:
        assert member.group_snapshot_id == group.group_snapshot_id
        assert member.ready_to_use
        assert member.size_bytes == 16 * MiB
        assert snapshot_image(driver, member.snapshot_id).exists()

    # Idempotent by name and source set (in any order); other sources: ALREADY_EXISTS.
    again = await create_group(driver, "g1", list(reversed(sources)))
    assert again.group_snapshot_id == group.group_snapshot_id
    assert member_ids(again) == member_ids(group)
    await fails(Status.ALREADY_EXISTS, create_group(driver, "g1", [a.id, b.id]))

    got = await get_group(driver, group.group_snapshot_id, member_ids(group))
    assert member_ids(got) == member_ids(group)
    assert got.creation_time == group.creation_time
    await fails(Status.INVALID_ARGUMENT, get_group(driver, group.group_snapshot_id, [a.id]))

    # Members report their group in GetSnapshot and ListSnapshots, may not be deleted
    # alone, and restore like any snapshot.
    first = group.snapshots[0]
    reply = await driver.client.controller.get_snapshot(
        csi.GetSnapshotRequest(snapshot_id=first.snapshot_id)
    )
    assert reply.snapshot is not None
    assert reply.snapshot.group_snapshot_id == group.group_snapshot_id
    listed = await driver.client.controller.list_snapshots(csi.ListSnapshotsRequest())
    assert {
        e.snapshot.snapshot_id: e.snapshot.group_snapshot_id for e in listed.entries if e.snapshot
    } == {s.snapshot_id: group.group_snapshot_id for s in group.snapshots}
    await fails(
        Status.FAILED_PRECONDITION,
        driver.client.controller.delete_snapshot(
            csi.DeleteSnapshotRequest(snapshot_id=first.snapshot_id)
        ),
    )
    restored = await create(
        driver, "restored", caps=[cap_for(kind)], source=from_snapshot(first.snapshot_id)
    )
    assert restored.content_source == from_snapshot(first.snapshot_id)

    await fails(
        Status.INVALID_ARGUMENT,
        delete_group(driver, group.group_snapshot_id, member_ids(group)[:1]),
    )
    for _ in range(2):
        await delete_group(driver, group.group_snapshot_id, member_ids(group))
    await fails(Status.NOT_FOUND, get_group(driver, group.group_snapshot_id))
    for member in group.snapshots:
        assert not snapshot_image(driver, member.snapshot_id).exists()
    listed = await driver.client.controller.list_snapshots(csi.ListSnapshotsRequest())
    assert not listed.entries
    await driver.client.controller.delete_volume(
        csi.DeleteVolumeRequest(volume_id=restored.volume_id)
    )
    for vol in (a, b):
        await vol.unstage()


async def test_no_member_changes_alone_while_its_group_is_taken(driver: Driver) -> None:
    a, b = await two_staged(driver, "ext4")
    seam = install_group_seam(driver, hold_at=1)
    taking = asyncio.create_task(create_group(driver, "g", [a.id, b.id]))
    await asyncio.wait_for(seam.reached.wait(), 10)
    await fails(Status.ABORTED, a.controller_expand(32 * MiB))
    await fails(Status.ABORTED, snapshot(driver, "alone", b.id))
    await fails(Status.ABORTED, b.delete())
    await fails(Status.ABORTED, create_group(driver, "other", [b.id]))
    seam.release.set()
    group = await taking
    assert all(s.size_bytes == 16 * MiB for s in group.snapshots)
    assert await a.controller_expand(32 * MiB) == 32 * MiB
    await delete_group(driver, group.group_snapshot_id, member_ids(group))
    for vol in (a, b):
        await vol.unstage()


async def test_snapshot_and_expand_exclude_each_other(driver: Driver) -> None:
    """Issue 15 item 4: a snapshot taken while its source grew recorded the old size."""
    vol = await new_volume(driver, "grow", cap_for("block"))
    snapshots = driver.server.engine.snapshots
    real = snapshots.capture
    reached, release = asyncio.Event(), asyncio.Event()

    async def held(volume_id: str, snapshot_id: str) -> str:
        reached.set()
        await release.wait()
        return await real(volume_id, snapshot_id)

    snapshots.capture = held  # type: ignore[method-assign]
    taking = asyncio.create_task(snapshot(driver, "s", vol.id))
    await asyncio.wait_for(reached.wait(), 10)
    await fails(Status.ABORTED, vol.controller_expand(32 * MiB))
    release.set()
    snap = await taking
    snapshots.capture = real  # type: ignore[method-assign]
    assert snap.size_bytes == 16 * MiB
    assert snapshot_image(driver, snap.snapshot_id).stat().st_size == snap.size_bytes
    assert await vol.controller_expand(32 * MiB) == 32 * MiB
    await driver.client.controller.delete_snapshot(
        csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id)
    )
