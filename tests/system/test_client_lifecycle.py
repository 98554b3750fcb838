"""The client as a process against a real `aiocsi serve`: a whole volume lifecycle, in both
output forms, each answer checked against the driver's real state (its own ListVolumes and
ListSnapshots through an in-test client, the loop devices, the mount table, statvfs)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from aiocsi._proto.csi import v1 as csi
from aiocsi.host.loop import all_loop_backing_files
from aiocsi.host.mount import parse_mountinfo

from .client_cli import Ran, aiocsi
from .conftest import Csi
from .process import serve_process

MiB = 1024 * 1024
TIMEOUT = 30.0


def mounted(path: Path) -> bool:
    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    return any(m.mount_point == str(path) for m in mounts)


def pool_devices(pool: Path) -> dict[str, str]:
    return {d: f for d, f in all_loop_backing_files().items() if f.startswith(f"{pool}/")}


async def volumes(stubs: Csi) -> dict[str, csi.ListVolumesResponseEntry]:
    reply = await stubs.controller.list_volumes(csi.ListVolumesRequest(), timeout=TIMEOUT)
    assert reply.next_token == ""
    return {e.volume.volume_id: e for e in reply.entries if e.volume is not None}


async def snapshots(stubs: Csi) -> dict[str, csi.Snapshot]:
    reply = await stubs.controller.list_snapshots(csi.ListSnapshotsRequest(), timeout=TIMEOUT)
    return {e.snapshot.snapshot_id: e.snapshot for e in reply.entries if e.snapshot is not None}


def shows(text: str, name: str, value: str) -> bool:
    """The table output has a `name   value` line (the padding depends on the other rows)."""
    pattern = rf"^\s*{re.escape(name)}\s+{re.escape(value)}\s*$"
    return re.search(pattern, text, re.MULTILINE) is not None


class Client:
    """One output form; `run` checks the exit code and returns the JSON document or text."""

    def __init__(self, socket_path: Path, form: str) -> None:
        self.socket_path, self.as_json = socket_path, form == "json"

    async def run(self, *args: str) -> Any:
        ran: Ran = await aiocsi(
            *args, *(["--json"] if self.as_json else []), endpoint=self.socket_path
        )
        assert ran.code == 0, ran
        assert ran.err == "", ran
        return ran.json() if self.as_json else ran.out

    async def publish(self, volume_id: str, staging: Path, target: Path, *args: str) -> Any:
        return await self.run(
            "volume",
            "publish",
            volume_id,
            "--staging-path",
            str(staging),
            "--target-path",
            str(target),
            *args,
        )

    async def new_volume(self, stubs: Csi, *args: str) -> tuple[str, Any]:
        before = set(await volumes(stubs))
        answer = await self.run("volume", "create", *args)
        (made,) = set(await volumes(stubs)) - before
        if self.as_json:
            assert answer["volume"]["volume_id"] == made
        else:
            assert shows(answer, "id", made)
        return made, answer


async def _info(client: Client, stubs: Csi) -> None:
    answer = await client.run("info")
    plugin = await stubs.identity.get_plugin_info(csi.GetPluginInfoRequest(), timeout=TIMEOUT)
    if client.as_json:
        assert answer["plugin_info"]["name"] == plugin.name
        assert answer["plugin_info"]["vendor_version"] == plugin.vendor_version
        assert answer["probe"] == {"ready": True}
        assert answer["node_info"]["node_id"] == "test-node"
        offered = {c["rpc"]["type"] for c in answer["controller_capabilities"]["capabilities"]}
        assert {"CREATE_DELETE_VOLUME", "EXPAND_VOLUME", "GET_VOLUME"} <= offered
        assert "PUBLISH_UNPUBLISH_VOLUME" not in offered  # no --enable-attach
    else:
        assert f"Driver {plugin.name}" in answer
        assert shows(answer, "ready", "yes")
        assert shows(answer, "node id", "test-node")
        assert shows(answer, "topology", "topology.aiocsi.dev/node=test-node")


@pytest.mark.parametrize("form", ["json", "table"])
async def test_a_whole_lifecycle_through_the_client(cleanup: Path, form: str) -> None:
    async with serve_process(cleanup) as server:
        stubs = Csi.connect(server.socket_path)
        try:
            await _lifecycle(Client(server.socket_path, form), stubs, cleanup)
        finally:
            stubs.close()


async def _lifecycle(client: Client, stubs: Csi, root: Path) -> None:
    await _info(client, stubs)
    volume_id = await _create_and_look(client, stubs)
    await _stage_publish_stats(client, volume_id, root)
    snapshot_id, restored_id = await _snapshot_and_restore(client, stubs, volume_id, root)
    await _expand_and_delete(client, stubs, volume_id, snapshot_id, restored_id)


async def _create_and_look(client: Client, stubs: Csi) -> str:
    # 100M (decimal) is rounded up to whole MiB by the driver: 96 MiB.
    volume_id, made = await client.new_volume(stubs, "v1", "--size", "100M", "--fs-type", "ext4")
    assert (await volumes(stubs))[volume_id].volume.capacity_bytes == 96 * MiB  # type: ignore[union-attr]
    if client.as_json:
        assert made["volume"]["capacity_bytes"] == 96 * MiB
    else:
        assert shows(made, "size", "96 MiB")

    listed = await client.run("volume", "list")
    if client.as_json:
        assert [e["volume"]["volume_id"] for e in listed["entries"]] == list(await volumes(stubs))
        assert listed["next_token"] == ""
    else:
        assert volume_id in listed
        assert "96 MiB" in listed

    got = await client.run("volume", "get", volume_id)
    if client.as_json:
        assert got["volume"]["volume_id"] == volume_id
        assert got["status"]["published_node_ids"] == []
        assert got["status"]["volume_condition"]["abnormal"] is False
    else:
        assert shows(got, "condition", "ok: volume is healthy")
    return volume_id


async def _stage_publish_stats(client: Client, volume_id: str, root: Path) -> None:
    pool = root / "pool"
    staging, target = root / "stage" / "v1", root / "pods" / "p1" / "mnt"
    staged = await client.run(
        "volume", "stage", volume_id, "--staging-path", str(staging), "--fs-type", "ext4"
    )
    assert mounted(staging)
    assert len(pool_devices(pool)) == 1
    if client.as_json:
        assert staged["volume_id"] == volume_id
        assert staged["staging_target_path"] == str(staging)
        assert "secrets" not in staged
    else:
        assert f"Volume {volume_id} staged at {staging}" in staged

    await client.publish(volume_id, staging, target, "--fs-type", "ext4")
    assert mounted(target)
    (target / "data").write_bytes(b"kept across the snapshot")
    os.sync()

    stats = await client.run("volume", "stats", volume_id, "--path", str(target))
    st = os.statvfs(target)
    if client.as_json:
        usage = {u["unit"]: u for u in stats["usage"]}
        assert usage["BYTES"]["total"] == st.f_blocks * st.f_frsize
        assert usage["INODES"]["total"] == st.f_files
        assert usage["INODES"]["used"] == st.f_files - st.f_ffree
        assert stats["volume_condition"]["abnormal"] is False
    else:
        assert re.search(rf"^\s*INODES\s+{st.f_files}\s", stats, re.MULTILINE), stats
        assert shows(stats, "abnormal", "no")

    await client.run("volume", "unpublish", volume_id, "--target-path", str(target))
    assert not mounted(target)
    await client.run("volume", "unstage", volume_id, "--staging-path", str(staging))
    assert not mounted(staging)
    assert pool_devices(pool) == {}


async def _snapshot_and_restore(
    client: Client, stubs: Csi, volume_id: str, root: Path
) -> tuple[str, str]:
    snapped = await client.run("snapshot", "create", "s1", "--source", volume_id)
    (snapshot_id,) = await snapshots(stubs)
    real = (await snapshots(stubs))[snapshot_id]
    assert real.source_volume_id == volume_id
    if client.as_json:
        assert snapped["snapshot"]["snapshot_id"] == snapshot_id
        assert snapped["snapshot"]["size_bytes"] == real.size_bytes
        assert snapped["snapshot"]["ready_to_use"] is real.ready_to_use
    else:
        assert shows(snapped, "id", snapshot_id)
    got_snapshot = await client.run("snapshot", "get", snapshot_id)
    listed_snapshots = await client.run("snapshot", "list", "--source", volume_id)
    if client.as_json:
        assert got_snapshot["snapshot"]["source_volume_id"] == volume_id
        assert [e["snapshot"]["snapshot_id"] for e in listed_snapshots["entries"]] == [snapshot_id]
    else:
        assert volume_id in got_snapshot
        assert snapshot_id in listed_snapshots

    restored_id, restored = await client.new_volume(stubs, "r1", "--from-snapshot", snapshot_id)
    if client.as_json:
        assert restored["volume"]["content_source"]["snapshot"]["snapshot_id"] == snapshot_id
    else:
        assert shows(restored, "restored from", f"snapshot {snapshot_id}")
    await _check_restored_data(client, restored_id, root)
    return snapshot_id, restored_id


async def _expand_and_delete(
    client: Client, stubs: Csi, volume_id: str, snapshot_id: str, restored_id: str
) -> None:
    expanded = await client.run("volume", "expand", volume_id, "--size", "0.25Gi")
    assert (await volumes(stubs))[volume_id].volume.capacity_bytes == 256 * MiB  # type: ignore[union-attr]
    if client.as_json:
        assert expanded["controller"]["capacity_bytes"] == 256 * MiB
        assert expanded["node"] is None
    else:
        assert shows(expanded, "size", "256 MiB")

    capacity = await client.run("capacity")
    real_capacity = await stubs.controller.get_capacity(csi.GetCapacityRequest(), timeout=TIMEOUT)
    if client.as_json:
        # Other tests' pools share the filesystem: the figure moves, but not by a volume's worth.
        assert abs(capacity["available_capacity"] - real_capacity.available_capacity) < 64 * MiB
    else:
        assert "available" in capacity

    await client.run("snapshot", "delete", snapshot_id)
    assert await snapshots(stubs) == {}
    deleted = await client.run("volume", "delete", volume_id, restored_id)
    assert await volumes(stubs) == {}
    if client.as_json:
        assert deleted == {"deleted": [{"volume_id": volume_id}, {"volume_id": restored_id}]}
    else:
        assert volume_id in deleted
        assert restored_id in deleted


async def _check_restored_data(client: Client, volume_id: str, root: Path) -> None:
    staging, target = root / "stage" / "r1", root / "pods" / "p2" / "mnt"
    await client.run("volume", "stage", volume_id, "--staging-path", str(staging))
    await client.publish(volume_id, staging, target)
    assert (target / "data").read_bytes() == b"kept across the snapshot"
    await client.run("volume", "unpublish", volume_id, "--target-path", str(target))
    await client.run("volume", "unstage", volume_id, "--staging-path", str(staging))
    assert not mounted(staging)


async def test_attach_and_detach(cleanup: Path) -> None:
    async with serve_process(cleanup, "--enable-attach", "true") as server:
        stubs = Csi.connect(server.socket_path)
        try:
            client = Client(server.socket_path, "json")
            volume_id, _ = await client.new_volume(stubs, "a1", "--size", "16Mi")
            attached = await client.run("volume", "attach", volume_id, "--node", "test-node")
            assert "publish_context" in attached
            status = (await volumes(stubs))[volume_id].status
            assert status is not None
            assert status.published_node_ids == ["test-node"]
            detached = await client.run("volume", "detach", volume_id, "--node", "test-node")
            assert detached == {"volume_id": volume_id, "node_id": "test-node"}
            status = (await volumes(stubs))[volume_id].status
            assert status is not None
            assert status.published_node_ids == []
            await client.run("volume", "delete", volume_id)
            assert await volumes(stubs) == {}
        finally:
            stubs.close()


async def test_a_block_volume(cleanup: Path) -> None:
    async with serve_process(cleanup) as server:
        stubs = Csi.connect(server.socket_path)
        try:
            client = Client(server.socket_path, "table")
            volume_id, _ = await client.new_volume(stubs, "b1", "--size", "16Mi", "--block")
            staging, target = cleanup / "stage" / "b1", cleanup / "pods" / "pb" / "dev"
            await client.run(
                "volume", "stage", volume_id, "--staging-path", str(staging), "--block"
            )
            await client.publish(volume_id, staging, target, "--block")
            assert stat.S_ISBLK(target.stat().st_mode)
            await client.run("volume", "unpublish", volume_id, "--target-path", str(target))
            await client.run("volume", "unstage", volume_id, "--staging-path", str(staging))
            assert pool_devices(cleanup / "pool") == {}
            await client.run("volume", "delete", volume_id)
        finally:
            stubs.close()
