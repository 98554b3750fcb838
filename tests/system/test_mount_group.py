"""VOLUME_MOUNT_GROUP on real filesystems (issue 15, item 3).

A volume staged with `volume_mount_group` has its filesystem root in that group, setgid
and group-writable, so that a pod process holding only that group can write to it and
what it makes inherits the group. Only the root changes (no recursive walk), only once,
at stage. The pod is a real process with a non-root uid and the group as its only one;
it reaches the volume through a directory descriptor the test hands it, so the test's own
directories (root only) need no opening up.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import anyio
import pytest
from grpclib.const import Status

from aiocsi._proto.csi import v1 as csi

from .conftest import Driver, driver_config, mount_capability, running_driver
from .test_node import FS_TYPES, SIZE, Vol, fails, new_volume

pytestmark = pytest.mark.system

POD_UID = 1234
GROUP = "2000"
OTHER_GROUP = "3000"
Mode = csi.VolumeCapabilityAccessModeMode
Rpc = csi.NodeServiceCapabilityRpcType
INVALID_GROUPS = ["abc", "-1", "+2000", "02000", " 2000", "2000 ", "1e3", "4294967295", "9" * 20]


def grouped(fs_type: str, group: str, mode: int = Mode.SINGLE_NODE_WRITER) -> csi.VolumeCapability:
    cap = mount_capability(fs_type, mode)
    assert cap.mount is not None
    cap.mount.volume_mount_group = group
    return cap


async def as_pod(directory: Path, gid: int, script: str) -> tuple[int, str]:
    """Run `script` (sh) in `directory` as uid POD_UID with `gid` as its only group."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        done = await anyio.run_process(
            # setpriv: uvloop's subprocess_exec takes no user/group/extra_groups.
            [
                "setpriv",
                f"--reuid={POD_UID}",
                f"--regid={gid}",
                "--clear-groups",
                "sh",
                "-c",
                f"cd /proc/self/fd/{fd} && {script}",
            ],
            check=False,
            pass_fds=(fd,),
            env={"PATH": "/usr/bin:/bin"},
        )
    finally:
        os.close(fd)
    return done.returncode, (done.stdout + done.stderr).decode()


async def staged_and_published(d: Driver, name: str, fs_type: str, group: str) -> Vol:
    vol = await new_volume(d, name, grouped(fs_type, group), SIZE[fs_type])
    await vol.up()
    return vol


@pytest.mark.parametrize("fs_type", FS_TYPES)
async def test_a_pod_with_only_the_mount_group_writes_and_its_files_inherit_it(
    driver: Driver, fs_type: str
) -> None:
    vol = await new_volume(driver, f"g-{fs_type}", mount_capability(fs_type), SIZE[fs_type])
    # A deep tree made before any mount group, by root: it must keep its group.
    await vol.up()
    deep = vol.target / "a" / "b" / "c"
    await anyio.Path(deep).mkdir(parents=True)
    await anyio.Path(deep / "old").write_bytes(b"old\n")
    code, out = await as_pod(vol.target, int(GROUP), "touch denied")
    assert code != 0, f"a fresh root:root 0755 root is not writable by the pod: {out}"
    await vol.down()

    vol.cap = grouped(fs_type, GROUP)
    await vol.up()
    root = await anyio.Path(vol.target).stat()
    assert root.st_gid == int(GROUP)
    assert root.st_uid == 0, "the owner stays"
    assert root.st_mode & stat.S_ISGID, "setgid: new entries inherit the group"
    assert stat.S_IMODE(root.st_mode) & stat.S_IRWXG == stat.S_IRWXG

    code, out = await as_pod(
        vol.target, int(GROUP), "echo pod > made && mkdir made-dir && id -u && id -G"
    )
    assert code == 0, out
    assert out.split() == [str(POD_UID), GROUP], "the pod has the group as its only one"
    made = await anyio.Path(vol.target / "made").stat()
    assert (made.st_uid, made.st_gid) == (POD_UID, int(GROUP))
    made_dir = await anyio.Path(vol.target / "made-dir").stat()
    assert made_dir.st_gid == int(GROUP)
    assert made_dir.st_mode & stat.S_ISGID, "new directories carry the setgid bit on"
    # Seen through the staging mount too: the group is the filesystem's, not the bind's.
    assert (await anyio.Path(vol.staging / "made").stat()).st_gid == int(GROUP)

    # No recursive walk: what was there keeps its group.
    for path in (vol.target / "a", deep, deep / "old"):
        assert (await anyio.Path(path).stat()).st_gid == 0, path

    # Another group, without the mount group, is still refused.
    code, out = await as_pod(vol.target, int(OTHER_GROUP), "touch other")
    assert code != 0, out
    assert not await anyio.Path(vol.target / "other").exists()
    await vol.down()


async def test_the_group_is_applied_once_not_on_every_stage(driver: Driver) -> None:
    vol = await staged_and_published(driver, "once", "ext4", GROUP)
    # The pod tightens its root; a repeated (idempotent) stage and publish leave it so.
    await anyio.Path(vol.target).chmod(0o2750)
    await vol.stage()
    await vol.publish()
    root = await anyio.Path(vol.target).stat()
    assert (stat.S_IMODE(root.st_mode), root.st_gid) == (0o2750, int(GROUP))
    await vol.down()


async def test_stage_again_with_another_group_is_already_exists(driver: Driver) -> None:
    vol = await staged_and_published(driver, "restage", "ext4", GROUP)
    message = await fails(Status.ALREADY_EXISTS, vol.stage(grouped("ext4", OTHER_GROUP)))
    assert "volume_mount_group 2000 at stage, 3000 now" in message
    await fails(Status.ALREADY_EXISTS, vol.stage(mount_capability("ext4")))
    # The same target again without the group: the spec's incompatible publication.
    await fails(Status.ALREADY_EXISTS, vol.publish(cap=mount_capability("ext4")))
    # The refusal changed nothing.
    assert (await anyio.Path(vol.target).stat()).st_gid == int(GROUP)
    await vol.down()


async def test_the_stage_group_survives_a_restart(cleanup: Path) -> None:
    config = driver_config(cleanup)
    async with running_driver(config, cleanup) as d:
        vol = await staged_and_published(d, "restart", "ext4", GROUP)
    async with running_driver(config, cleanup) as d:
        vol.driver = d
        await vol.stage()  # the recorded capability, group included, matches
        await fails(Status.ALREADY_EXISTS, vol.stage(grouped("ext4", OTHER_GROUP)))
        await vol.down()


async def test_publish_with_another_group_than_the_stage_is_failed_precondition(
    driver: Driver,
) -> None:
    vol = await staged_and_published(driver, "pubgroup", "ext4", GROUP)
    second = vol.target.parent.parent / "second" / "target"
    message = await fails(
        Status.FAILED_PRECONDITION, vol.publish(second, cap=grouped("ext4", OTHER_GROUP))
    )
    assert "staged with volume_mount_group 2000, not 3000" in message
    assert not await anyio.Path(second).exists(), "nothing made for the refused publication"
    # Without a group, or with the staged one, a second pod shares it.
    await vol.publish(second, cap=mount_capability("ext4"))
    await vol.unpublish(second)
    await vol.publish(second)
    await vol.unpublish(second)
    await vol.down()


async def test_publish_with_a_group_on_a_volume_staged_without_one_is_refused(
    driver: Driver,
) -> None:
    vol = await new_volume(driver, "nogroup", mount_capability("ext4"), SIZE["ext4"])
    await vol.stage()
    message = await fails(Status.FAILED_PRECONDITION, vol.publish(cap=grouped("ext4", GROUP)))
    assert "volume_mount_group unset, not 2000" in message
    await vol.unstage()


async def test_a_read_only_stage_leaves_the_root_as_it_is(driver: Driver) -> None:
    cap = grouped("ext4", GROUP, Mode.SINGLE_NODE_READER_ONLY)
    vol = await new_volume(driver, "rogroup", cap, SIZE["ext4"])
    await vol.up(readonly=True)
    assert (await anyio.Path(vol.target).stat()).st_gid == 0
    await vol.down()


async def test_an_inline_volume_gets_the_group(driver: Driver) -> None:
    target = driver.root / "pods" / "inline" / "target"
    request = csi.NodePublishVolumeRequest(
        volume_id="csi-inline-group",
        target_path=str(target),
        volume_capability=grouped("ext4", GROUP),
        volume_context={"csi.storage.k8s.io/ephemeral": "true", "size": "16Mi"},
    )
    await driver.client.node.node_publish_volume(request)
    root = await anyio.Path(target).stat()
    assert root.st_gid == int(GROUP)
    assert root.st_mode & stat.S_ISGID
    code, out = await as_pod(target, int(GROUP), "touch made")
    assert code == 0, out
    await driver.client.node.node_unpublish_volume(
        csi.NodeUnpublishVolumeRequest(volume_id=request.volume_id, target_path=str(target))
    )


@pytest.mark.parametrize("group", INVALID_GROUPS)
async def test_invalid_groups_are_invalid_argument(driver: Driver, group: str) -> None:
    vol = await new_volume(driver, "badgroup", mount_capability("ext4"), SIZE["ext4"])
    for call in (
        vol.stage(grouped("ext4", group)),
        vol.publish(cap=grouped("ext4", group)),
        driver.client.controller.create_volume(
            csi.CreateVolumeRequest(name="other", volume_capabilities=[grouped("ext4", group)])
        ),
    ):
        message = await fails(Status.INVALID_ARGUMENT, call)
        assert "volume_capabilit" in message
        assert "volume_mount_group" in message
    assert not await anyio.Path(vol.staging).exists(), "a refused stage makes nothing"
    assert not await anyio.Path(vol.target).exists()


async def test_the_capability_is_advertised(driver: Driver) -> None:
    reply = await driver.client.node.node_get_capabilities(csi.NodeGetCapabilitiesRequest())
    types = {c.rpc.type for c in reply.capabilities if c.rpc is not None}
    assert Rpc.VOLUME_MOUNT_GROUP in types


async def test_a_stage_read_only_by_flag_leaves_the_root_but_ro_then_rw_gets_the_group(
    driver: Driver,
) -> None:
    ro = await new_volume(driver, "roflag", mount_capability("ext4"), SIZE["ext4"])
    await ro.up()  # formatted read-write first: a blank volume cannot be mounted ro
    await ro.down()
    ro.cap = grouped("ext4", GROUP)
    assert ro.cap.mount is not None
    ro.cap.mount.mount_flags = ["ro"]
    await ro.up()
    assert (await anyio.Path(ro.target).stat()).st_gid == 0
    await ro.down()
    ro.cap.mount.mount_flags = ["ro", "rw"]
    await ro.up()
    assert (await anyio.Path(ro.target).stat()).st_gid == int(GROUP)
    await ro.down()
