"""Hostile and malformed input against the real server (issue 6).

Every test checks the host itself, before and after: the pool's files, loop devices in
sysfs, /proc/self/mountinfo, and the places a hostile request aims at (/etc, files planted
next to the pool). Paths that must never be touched are only ever ones this test made,
or names under /etc that do not exist (so that a regression creates, never destroys).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import signal
import stat
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError
from structlog.testing import capture_logs

from aiocsi._proto.csi import v1 as csi
from aiocsi.host import syscalls
from aiocsi.host.loop import all_loop_backing_files
from aiocsi.host.mount import MountEntry, parse_mountinfo

from .conftest import (
    Csi,
    Driver,
    block_capability,
    driver_config,
    mount_capability,
    running_driver,
    volume_id_of,
)
from .process import run_cli, serve_process

pytestmark = pytest.mark.system

MiB = 1024 * 1024
NODE = "test-node"
MessageT = TypeVar("MessageT")
Mode = csi.VolumeCapabilityAccessModeMode
OVER_MAP = {f"k{i:03}": "v" * 100 for i in range(41)}  # 41 * 104 bytes: over 4 KiB
ETC = Path("/etc")

# -- host views ------------------------------------------------------------------------------


def mounts() -> list[MountEntry]:
    return parse_mountinfo(os.fsdecode(Path("/proc/self/mountinfo").read_bytes()))


def mounts_under(root: Path) -> list[str]:
    return [m.mount_point for m in mounts() if m.mount_point.startswith(f"{root}/")]


def loops_under(root: Path) -> list[str]:
    return [dev for dev, f in all_loop_backing_files().items() if f.startswith(f"{root}/")]


def etc_entries(token: str) -> list[str]:
    return sorted(p.name for p in ETC.iterdir() if token in p.name)


def images(pool: Path) -> list[str]:
    dirs = [pool / "volumes", pool / "snapshots"]
    return sorted(p.name for d in dirs if d.is_dir() for p in d.iterdir())


def _caused_by(entry: MountEntry, devices: set[str]) -> bool:
    """Whether a mount shows one of `devices` (a bind of a device node shows its devtmpfs
    path as root) or lies in /etc: only this test's driver could have made such a one."""
    shown = f"/dev{entry.root}" if entry.fs_type == "devtmpfs" else entry.source
    return shown in devices or Path(entry.mount_point).is_relative_to(ETC)


@contextlib.contextmanager
def no_new_mounts_outside(root: Path) -> Iterator[None]:
    """Fail if this test's driver mounts anything outside `root`, and undo such a mount.

    Other processes may mount concurrently: only a mount of a loop device backed by an
    image under `root`, or one in /etc, counts.
    """
    before = {m.mount_id for m in mounts()}
    try:
        yield
    finally:
        devices = set(loops_under(root))
        strays = [
            m
            for m in mounts()
            if m.mount_id not in before
            and not m.mount_point.startswith(f"{root}/")
            and _caused_by(m, devices)
        ]
        for entry in sorted(strays, key=lambda m: m.mount_id, reverse=True):
            subprocess.run(["umount", entry.mount_point], check=False, capture_output=True)
        assert strays == [], f"mounted outside {root}: {[m.mount_point for m in strays]}"


@contextlib.contextmanager
def nothing_new_in_etc(token: str) -> Iterator[None]:
    """Fail if anything named with `token` appears in /etc; remove it if it is an empty dir."""
    try:
        yield
    finally:
        made = etc_entries(token)
        for name in made:
            with contextlib.suppress(OSError):
                (ETC / name).rmdir()
        assert made == [], f"created in /etc: {made}"


# -- calls -----------------------------------------------------------------------------------


async def code_of(call: Awaitable[object]) -> str:
    try:
        await call
    except GRPCError as exc:
        failure = exc
    else:
        return "OK"
    assert failure.message, "every error says why"
    return failure.status.name


def with_field(message: MessageT, field: str, value: object) -> MessageT:
    setattr(message, field, value)
    return message


async def fails(status: Status, call: Awaitable[object]) -> str:
    with pytest.raises(GRPCError) as info:
        await call
    assert info.value.status is status, f"{info.value.status.name}: {info.value.message}"
    return str(info.value.message)


async def new_volume(d: Driver, name: str, cap: csi.VolumeCapability | None = None) -> str:
    reply = await d.client.controller.create_volume(
        csi.CreateVolumeRequest(
            name=name,
            volume_capabilities=[cap or mount_capability()],
            capacity_range=csi.CapacityRange(required_bytes=16 * MiB),
        )
    )
    return volume_id_of(reply)


def stage_request(
    volume_id: str,
    staging: Path | str,
    cap: csi.VolumeCapability | None = None,
    secrets: dict[str, str] | None = None,
) -> csi.NodeStageVolumeRequest:
    return csi.NodeStageVolumeRequest(
        volume_id=volume_id,
        staging_target_path=str(staging),
        volume_capability=cap or mount_capability(),
        secrets=secrets or {},
    )


def publish_request(
    volume_id: str, staging: Path | str, target: Path | str, **kwargs: object
) -> csi.NodePublishVolumeRequest:
    return csi.NodePublishVolumeRequest(
        volume_id=volume_id,
        staging_target_path=str(staging),
        target_path=str(target),
        volume_capability=kwargs.pop("cap", None) or mount_capability(),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def confined_driver(workdir: Path, **overrides: object) -> AsyncIterator[Driver]:
    """A driver whose only allowed path root is `workdir/allowed`; `workdir/outside` is not."""
    (workdir / "allowed").mkdir()
    (workdir / "outside").mkdir()
    config = driver_config(workdir, allowed_path_roots=(workdir / "allowed",), **overrides)
    async with running_driver(config, workdir) as d:
        yield d


# -- 1. validation before any side effect, on every RPC -----------------------------------------

UNKNOWN = "vol-" + "0" * 32


@dataclass(frozen=True)
class Hostile:
    rpc: str
    request: object
    code: str


ESCAPING_VOLUME_IDS = [
    "../sentinel",
    "vol-../sentinel",
    "vol-../../sentinel",
    "vol-../../../sentinel",
    "/etc/passwd",
    "vol-" + "0" * 31 + "/",
]
ESCAPING_SNAPSHOT_IDS = ["snap-../sentinel", "snap-../../../sentinel", "../../sentinel"]


def bad_capabilities() -> list[csi.VolumeCapability]:
    both = mount_capability()
    both.block = csi.VolumeCapabilityBlockVolume()
    group = mount_capability()
    assert group.mount is not None
    group.mount.volume_mount_group = "root"  # a name, not a numeric gid
    return [
        mount_capability(mode=99),
        mount_capability(mode=-1),
        both,
        group,
        mount_capability(flags=("suid",)),
        mount_capability(flags=("bind",)),
        mount_capability(flags=("x-mount.mkdir=/etc/aiocsi",)),
        mount_capability(fs_type="../../etc"),
    ]


def create_volume_cases() -> list[Hostile]:
    cap = mount_capability()
    cases = [
        Hostile(
            "CreateVolume",
            csi.CreateVolumeRequest(name=name, volume_capabilities=[cap]),
            "INVALID_ARGUMENT",
        )
        for name in ("a\x00b", "n" * 129, "€" * 43)
    ]
    cases += [
        Hostile(
            "CreateVolume",
            with_field(
                csi.CreateVolumeRequest(name="x", volume_capabilities=[cap]), field, OVER_MAP
            ),
            "INVALID_ARGUMENT",
        )
        for field in ("secrets", "parameters", "mutable_parameters")
    ]
    cases += [
        Hostile(
            "CreateVolume",
            csi.CreateVolumeRequest(name="x", volume_capabilities=[bad]),
            "INVALID_ARGUMENT",
        )
        for bad in bad_capabilities()
    ]
    cases += [
        Hostile(
            "CreateVolume",
            csi.CreateVolumeRequest(
                name="x",
                volume_capabilities=[cap],
                volume_content_source=csi.VolumeContentSource(
                    snapshot=csi.VolumeContentSourceSnapshotSource(snapshot_id=sid)
                ),
            ),
            "NOT_FOUND",
        )
        for sid in ESCAPING_SNAPSHOT_IDS
    ]
    cases += [
        Hostile(
            "CreateVolume",
            csi.CreateVolumeRequest(
                name="x",
                volume_capabilities=[cap],
                volume_content_source=csi.VolumeContentSource(
                    volume=csi.VolumeContentSourceVolumeSource(volume_id=vid)
                ),
            ),
            "NOT_FOUND",
        )
        for vid in ESCAPING_VOLUME_IDS
    ]
    return cases


def escaping_id_cases(root: Path) -> list[Hostile]:
    """Ids this driver never issued name nothing: deletes are OK, the rest NOT_FOUND."""
    staging, target = root / "allowed" / "st", root / "allowed" / "tg"
    cap = mount_capability()
    cases: list[Hostile] = []
    for vid in ESCAPING_VOLUME_IDS:
        cases += [
            Hostile("DeleteVolume", csi.DeleteVolumeRequest(volume_id=vid), "OK"),
            Hostile(
                "ControllerUnpublishVolume",
                csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=NODE),
                "OK",
            ),
            Hostile(
                "ControllerGetVolume", csi.ControllerGetVolumeRequest(volume_id=vid), "NOT_FOUND"
            ),
            Hostile(
                "ControllerExpandVolume",
                csi.ControllerExpandVolumeRequest(
                    volume_id=vid, capacity_range=csi.CapacityRange(required_bytes=32 * MiB)
                ),
                "NOT_FOUND",
            ),
            Hostile(
                "ControllerModifyVolume",
                csi.ControllerModifyVolumeRequest(
                    volume_id=vid, mutable_parameters={"preallocate": "true"}
                ),
                "NOT_FOUND",
            ),
            Hostile(
                "ValidateVolumeCapabilities",
                csi.ValidateVolumeCapabilitiesRequest(volume_id=vid, volume_capabilities=[cap]),
                "NOT_FOUND",
            ),
            Hostile(
                "ControllerPublishVolume",
                csi.ControllerPublishVolumeRequest(
                    volume_id=vid, node_id=NODE, volume_capability=cap
                ),
                "NOT_FOUND",
            ),
            Hostile(
                "CreateSnapshot",
                csi.CreateSnapshotRequest(name="s", source_volume_id=vid),
                "NOT_FOUND",
            ),
            Hostile("NodeStageVolume", stage_request(vid, staging), "NOT_FOUND"),
            Hostile(
                "NodeUnstageVolume",
                csi.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=str(staging)),
                "NOT_FOUND",
            ),
            Hostile("NodePublishVolume", publish_request(vid, staging, target), "NOT_FOUND"),
            Hostile(
                "NodeGetVolumeStats",
                csi.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=str(target)),
                "NOT_FOUND",
            ),
            Hostile(
                "NodeExpandVolume",
                csi.NodeExpandVolumeRequest(volume_id=vid, volume_path=str(target)),
                "NOT_FOUND",
            ),
        ]
    for sid in ESCAPING_SNAPSHOT_IDS:
        cases += [
            Hostile("DeleteSnapshot", csi.DeleteSnapshotRequest(snapshot_id=sid), "OK"),
            Hostile("GetSnapshot", csi.GetSnapshotRequest(snapshot_id=sid), "NOT_FOUND"),
            Hostile("ListSnapshots", csi.ListSnapshotsRequest(snapshot_id=sid), "OK"),
            Hostile("ListSnapshots", csi.ListSnapshotsRequest(source_volume_id=sid), "OK"),
        ]
    for nul in ("vol-\x00", "\x00"):
        cases += [
            Hostile("DeleteVolume", csi.DeleteVolumeRequest(volume_id=nul), "INVALID_ARGUMENT"),
            Hostile(
                "DeleteSnapshot", csi.DeleteSnapshotRequest(snapshot_id=nul), "INVALID_ARGUMENT"
            ),
            Hostile("NodeStageVolume", stage_request(nul, staging), "INVALID_ARGUMENT"),
        ]
    return cases


def oversized_map_cases(volume_id: str, root: Path) -> list[Hostile]:
    """Every `secrets`, context, parameter and topology map is bounded, on every RPC."""
    staging, target = root / "allowed" / "st", root / "allowed" / "tg"
    cap = mount_capability()
    requests: list[tuple[str, object, str]] = [
        ("DeleteVolume", csi.DeleteVolumeRequest(volume_id=UNKNOWN), "secrets"),
        (
            "ControllerUnpublishVolume",
            csi.ControllerUnpublishVolumeRequest(volume_id=volume_id),
            "secrets",
        ),
        ("GetCapacity", csi.GetCapacityRequest(accessible_topology=csi.Topology()), ""),
        (
            "ControllerExpandVolume",
            csi.ControllerExpandVolumeRequest(
                volume_id=volume_id, capacity_range=csi.CapacityRange(required_bytes=32 * MiB)
            ),
            "secrets",
        ),
        (
            "ControllerModifyVolume",
            csi.ControllerModifyVolumeRequest(
                volume_id=volume_id, mutable_parameters={"preallocate": "true"}
            ),
            "secrets",
        ),
        (
            "CreateSnapshot",
            csi.CreateSnapshotRequest(name="s", source_volume_id=volume_id),
            "secrets",
        ),
        ("DeleteSnapshot", csi.DeleteSnapshotRequest(snapshot_id="snap-x"), "secrets"),
        ("GetSnapshot", csi.GetSnapshotRequest(snapshot_id="snap-x"), "secrets"),
        ("ListSnapshots", csi.ListSnapshotsRequest(), "secrets"),
        (
            "NodeExpandVolume",
            csi.NodeExpandVolumeRequest(volume_id=volume_id, volume_path=str(target)),
            "secrets",
        ),
    ]
    requests += [
        (
            "ControllerPublishVolume",
            csi.ControllerPublishVolumeRequest(
                volume_id=volume_id, node_id=NODE, volume_capability=cap
            ),
            field,
        )
        for field in ("secrets", "volume_context")
    ]
    requests += [
        (
            "ValidateVolumeCapabilities",
            csi.ValidateVolumeCapabilitiesRequest(volume_id=volume_id, volume_capabilities=[cap]),
            field,
        )
        for field in ("secrets", "volume_context", "parameters", "mutable_parameters")
    ]
    for field in ("secrets", "publish_context", "volume_context"):
        requests.append(("NodeStageVolume", stage_request(volume_id, staging), field))
        requests.append(("NodePublishVolume", publish_request(volume_id, staging, target), field))
    cases = []
    for rpc, request, field in requests:
        if field:
            with_field(request, field, OVER_MAP)
        else:  # GetCapacity's topology segments
            assert isinstance(request, csi.GetCapacityRequest)
            assert request.accessible_topology is not None
            request.accessible_topology.segments = OVER_MAP
        cases.append(Hostile(rpc, request, "INVALID_ARGUMENT"))
    return cases


def other_field_cases(volume_id: str, root: Path) -> list[Hostile]:
    staging, target = root / "allowed" / "st", root / "allowed" / "tg"
    cap = mount_capability()
    cases = [
        Hostile(
            "ControllerPublishVolume",
            csi.ControllerPublishVolumeRequest(
                volume_id=volume_id, node_id=node_id, volume_capability=cap
            ),
            code,
        )
        for node_id, code in (
            ("n\x00", "INVALID_ARGUMENT"),
            ("../../etc", "NOT_FOUND"),
            ("n" * 129, "INVALID_ARGUMENT"),
        )
    ]
    cases.append(
        Hostile(
            "CreateSnapshot",
            csi.CreateSnapshotRequest(name="s\x00", source_volume_id=volume_id),
            "INVALID_ARGUMENT",
        )
    )
    for bad in bad_capabilities():
        cases += [
            Hostile("NodeStageVolume", stage_request(volume_id, staging, bad), "INVALID_ARGUMENT"),
            Hostile(
                "NodePublishVolume",
                publish_request(volume_id, staging, target, cap=bad),
                "INVALID_ARGUMENT",
            ),
        ]
    # Tokens this driver never issued.
    for token in ("../1", "-1", "1" * 19, "²", " 1", "0x1", "1\x00"):
        cases += [
            Hostile("ListVolumes", csi.ListVolumesRequest(starting_token=token), "ABORTED"),
            Hostile("ListSnapshots", csi.ListSnapshotsRequest(starting_token=token), "ABORTED"),
        ]
    cases += [
        Hostile(
            "ListVolumes", csi.ListVolumesRequest(starting_token="9" * 129), "INVALID_ARGUMENT"
        ),
        Hostile("ListVolumes", csi.ListVolumesRequest(max_entries=-1), "INVALID_ARGUMENT"),
    ]
    return cases


def hostile_requests(volume_id: str, root: Path) -> list[Hostile]:
    """Requests with hostile ids, sizes and fields; `volume_id` is a real, unstaged volume."""
    return [
        *create_volume_cases(),
        *escaping_id_cases(root),
        *oversized_map_cases(volume_id, root),
        *other_field_cases(volume_id, root),
    ]


def _method(client: Csi, rpc: str) -> Callable[[object], Awaitable[object]]:
    name = "".join(f"_{c.lower()}" if c.isupper() else c for c in rpc).lstrip("_")
    for stub in (client.controller, client.node):
        method = getattr(stub, name, None)
        if method is not None:
            return method  # type: ignore[no-any-return]
    raise AssertionError(rpc)


async def test_hostile_requests_are_refused_before_any_side_effect(cleanup: Path) -> None:
    async with confined_driver(cleanup, enable_attach=True) as d:
        volume_id = await new_volume(d, "target-of-abuse")
        pool = d.pool
        # Places a careless driver would reach with the ids above: they must stay as they are.
        sentinels = [
            cleanup / "sentinel.img",
            pool / "sentinel.img",
            pool / "volumes" / "sentinel.img",
            pool / "snapshots" / "sentinel.img",
        ]
        for path in sentinels:
            path.write_bytes(b"keep me")
        # Make "vol-.." and "snap-.." real directories, so that ../ in an id would resolve.
        (pool / "volumes" / "vol-..").mkdir()
        (pool / "snapshots" / "snap-..").mkdir()
        listed_before = await d.client.controller.list_volumes(csi.ListVolumesRequest())
        cases = hostile_requests(volume_id, cleanup)
        assert len(cases) > 150
        got = [await code_of(_method(d.client, c.rpc)(c.request)) for c in cases]
        wrong = [
            (c.rpc, c.code, g, str(c.request)[:160])
            for c, g in zip(cases, got, strict=True)
            if g != c.code
        ]
        assert wrong == []
        # Nothing happened: no image, loop device, mount, directory or record was made.
        assert all(p.read_bytes() == b"keep me" for p in sentinels)
        assert images(pool) == sorted(
            ["sentinel.img", "sentinel.img", "vol-..", "snap-..", f"{volume_id}.img"]
        )
        assert loops_under(cleanup) == []
        assert mounts_under(cleanup) == []
        assert sorted(p.name for p in (cleanup / "allowed").iterdir()) == []
        assert await d.client.controller.list_volumes(csi.ListVolumesRequest()) == listed_before
        snaps = await d.client.controller.list_snapshots(csi.ListSnapshotsRequest())
        assert snaps.entries == []
        (pool / "volumes" / "vol-..").rmdir()
        (pool / "snapshots" / "snap-..").rmdir()
        for path in sentinels:
            path.unlink()
        await d.client.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=volume_id))


async def test_ephemeral_volumes_with_hostile_ids_stay_in_the_pool(cleanup: Path) -> None:
    token = secrets.token_hex(4)
    async with confined_driver(cleanup) as d:
        target = cleanup / "allowed" / "pod" / "vol"
        hostile_ids = [f"../../../../etc/aiocsi-{token}", f"vol-../../{token}", "..", "/"]
        with no_new_mounts_outside(cleanup), nothing_new_in_etc(token):
            for co_id in hostile_ids:
                await d.client.node.node_publish_volume(
                    csi.NodePublishVolumeRequest(
                        volume_id=co_id,
                        target_path=str(target),
                        volume_capability=mount_capability(),
                        volume_context={"csi.storage.k8s.io/ephemeral": "true", "size": "16Mi"},
                    )
                )
                [staged] = [m for m in mounts_under(cleanup) if m != str(target)]
                assert staged.startswith(f"{d.pool}/staging/vol-")
                assert str(target) in mounts_under(cleanup)
                await d.client.node.node_unpublish_volume(
                    csi.NodeUnpublishVolumeRequest(volume_id=co_id, target_path=str(target))
                )
                assert mounts_under(cleanup) == []
                assert loops_under(cleanup) == []
        assert images(d.pool) == []
        assert not list((cleanup / "outside").iterdir())


async def test_an_inline_volume_cannot_take_a_real_volumes_id(cleanup: Path) -> None:
    """kubelet names inline volumes "csi-<hash>": one named like a driver volume would shadow
    it, and every later unpublish, stats or expand for that id would act on the wrong one."""
    async with confined_driver(cleanup) as d:
        volume_id = await new_volume(d, "real")
        staging, target = cleanup / "allowed" / "st", cleanup / "allowed" / "tg"
        await d.client.node.node_stage_volume(stage_request(volume_id, staging))
        await d.client.node.node_publish_volume(publish_request(volume_id, staging, target))
        message = await fails(
            Status.INVALID_ARGUMENT,
            d.client.node.node_publish_volume(
                csi.NodePublishVolumeRequest(
                    volume_id=volume_id,
                    target_path=str(cleanup / "allowed" / "inline"),
                    volume_capability=mount_capability(),
                    volume_context={"csi.storage.k8s.io/ephemeral": "true", "size": "16Mi"},
                )
            ),
        )
        assert "inline ephemeral volume" in message
        assert not (cleanup / "allowed" / "inline").exists()
        listed = await d.client.controller.list_volumes(csi.ListVolumesRequest())
        assert [e.volume.volume_id for e in listed.entries if e.volume] == [volume_id]
        stats = await d.client.node.node_get_volume_stats(
            csi.NodeGetVolumeStatsRequest(volume_id=volume_id, volume_path=str(target))
        )
        assert stats.volume_condition is not None
        assert not stats.volume_condition.abnormal
        await d.client.node.node_unpublish_volume(
            csi.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=str(target))
        )
        await d.client.node.node_unstage_volume(
            csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=str(staging))
        )
        assert mounts_under(cleanup) == []


@pytest.mark.parametrize(
    ("staging_name", "target_name"),
    [("st", "st"), ("st", "st/pod"), ("pod/st", "pod")],
    ids=["same", "target-inside", "staging-inside"],
)
async def test_a_target_never_overlaps_its_staging_path(
    cleanup: Path, staging_name: str, target_name: str
) -> None:
    async with confined_driver(cleanup) as d:
        volume_id = await new_volume(d, "overlap")
        staging, target = cleanup / "allowed" / staging_name, cleanup / "allowed" / target_name
        await d.client.node.node_stage_volume(stage_request(volume_id, staging))
        mounted = mounts_under(cleanup)
        message = await fails(
            Status.INVALID_ARGUMENT,
            d.client.node.node_publish_volume(publish_request(volume_id, staging, target)),
        )
        assert "must not be the same path or lie one inside the other" in message
        assert mounts_under(cleanup) == mounted
        assert [p.name for p in staging.iterdir()] == ["lost+found"]
        await d.client.node.node_unstage_volume(
            csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=str(staging))
        )


async def test_one_staging_or_target_path_serves_one_volume(cleanup: Path) -> None:
    """A block volume staged (or published) where another volume is: either's unstage or
    unpublish would then meet the other's mount."""
    async with confined_driver(cleanup) as d:
        first = await new_volume(d, "first")
        second = await new_volume(d, "second", block_capability())
        staging, target = cleanup / "allowed" / "st", cleanup / "allowed" / "tg"
        await d.client.node.node_stage_volume(stage_request(first, staging))
        await d.client.node.node_publish_volume(publish_request(first, staging, target))
        for path in (staging, target):
            message = await fails(
                Status.FAILED_PRECONDITION,
                d.client.node.node_stage_volume(stage_request(second, path, block_capability())),
            )
            assert f"in use by volume {first}" in message
        assert len(loops_under(cleanup)) == 1
        await d.client.node.node_unpublish_volume(
            csi.NodeUnpublishVolumeRequest(volume_id=first, target_path=str(target))
        )
        await d.client.node.node_unstage_volume(
            csi.NodeUnstageVolumeRequest(volume_id=first, staging_target_path=str(staging))
        )
        assert mounts_under(cleanup) == []
        assert loops_under(cleanup) == []


# -- 2. path confinement ----------------------------------------------------------------------


def escaping_paths(root: Path, token: str) -> dict[str, Path | str]:
    """Staging/target paths that leave `root/allowed`, each one a different trick."""
    allowed = root / "allowed"
    return {
        "dot-dot": f"{allowed}/../outside/x",
        "dot-dot-to-etc": f"{allowed}/{'../' * 12}etc/aiocsi-{token}",
        "dot-dot-to-root": f"{allowed}/{'../' * 12}",
        "trailing-dot-dot": f"{allowed}/a/..",
        "symlink-to-etc": allowed / "etc-link",
        "under-symlink-to-etc": allowed / "etc-link" / f"aiocsi-{token}",
        "symlinked-parent": allowed / "parent-link" / "sub" / f"aiocsi-{token}",
        "dangling-symlink": allowed / "dangling",
        "symlink-to-outside": allowed / "outside-link" / "x",
        "symlink-to-root-itself": allowed / "self-link",
        "chained-symlinks": allowed / "chain-1" / "x",
    }


def plant_symlinks(root: Path, token: str) -> None:
    allowed = root / "allowed"
    (allowed / "etc-link").symlink_to(ETC)
    (allowed / "parent-link").symlink_to(ETC)
    (allowed / "dangling").symlink_to(ETC / f"aiocsi-{token}-dangling")
    (allowed / "outside-link").symlink_to(root / "outside")
    (allowed / "self-link").symlink_to(allowed)
    (allowed / "chain-2").symlink_to("../outside")
    (allowed / "chain-1").symlink_to("chain-2")


@pytest.mark.parametrize("access", ["mount", "block"])
async def test_paths_that_leave_the_allowed_root_are_refused(cleanup: Path, access: str) -> None:
    token = secrets.token_hex(4)
    cap = mount_capability() if access == "mount" else block_capability()
    async with confined_driver(cleanup) as d:
        plant_symlinks(cleanup, token)
        volume_id = await new_volume(d, "confined", cap)
        staging, target = cleanup / "allowed" / "staging", cleanup / "allowed" / "target"
        node = d.client.node
        with no_new_mounts_outside(cleanup), nothing_new_in_etc(token):
            for kind, bad in escaping_paths(cleanup, token).items():
                message = await fails(
                    Status.INVALID_ARGUMENT,
                    node.node_stage_volume(stage_request(volume_id, bad, cap)),
                )
                assert "staging_target_path" in message, kind
                assert loops_under(cleanup) == [], kind
            await node.node_stage_volume(stage_request(volume_id, staging, cap))
            mounted = mounts_under(cleanup)
            for kind, bad in escaping_paths(cleanup, token).items():
                message = await fails(
                    Status.INVALID_ARGUMENT,
                    node.node_publish_volume(publish_request(volume_id, staging, bad, cap=cap)),
                )
                assert "target_path" in message, kind
                await fails(
                    Status.INVALID_ARGUMENT,
                    node.node_publish_volume(publish_request(volume_id, bad, target, cap=cap)),
                )
                assert mounts_under(cleanup) == mounted, kind
            await node.node_unstage_volume(
                csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=str(staging))
            )
        assert mounts_under(cleanup) == []
        assert loops_under(cleanup) == []
        assert list((cleanup / "outside").iterdir()) == []
        assert not (ETC / f"aiocsi-{token}-dangling").exists()


async def test_an_inline_volume_with_an_escaping_target_is_refused_before_it_is_made(
    cleanup: Path,
) -> None:
    """Refused before any side effect: not made, formatted, staged and then rolled back."""
    token = secrets.token_hex(4)
    async with confined_driver(cleanup) as d:
        plant_symlinks(cleanup, token)
        with (
            no_new_mounts_outside(cleanup),
            nothing_new_in_etc(token),
            capture_logs() as logs,
        ):
            for target in (
                cleanup / "allowed" / "etc-link" / f"aiocsi-{token}",
                cleanup / "allowed" / "outside-link" / "pod",
            ):
                await fails(
                    Status.INVALID_ARGUMENT,
                    d.client.node.node_publish_volume(
                        csi.NodePublishVolumeRequest(
                            volume_id=f"csi-{token}",
                            target_path=str(target),
                            volume_capability=mount_capability(),
                            volume_context={
                                "csi.storage.k8s.io/ephemeral": "true",
                                "size": "16Mi",
                            },
                        )
                    ),
                )
        side_effects = [e["event"] for e in logs if e["event"].startswith("volume_")]
        assert side_effects == []
        assert images(d.pool) == []
        assert list((cleanup / "outside").iterdir()) == []


async def test_unpublish_never_removes_what_lies_outside_or_is_not_the_volumes(
    cleanup: Path,
) -> None:
    """NodeUnpublishVolume removes its target: only ever an empty one, under the roots."""
    async with confined_driver(cleanup) as d:
        outside, allowed = cleanup / "outside", cleanup / "allowed"
        (outside / "victim").write_text("precious")
        (outside / "victim-dir").mkdir()
        (allowed / "parent-link").symlink_to(outside)
        (allowed / "kubelet-config").write_text("precious too")
        volume_id = await new_volume(d, "unpublisher")
        node = d.client.node
        for path, code in (
            (allowed / "parent-link" / "victim", Status.INVALID_ARGUMENT),
            (allowed / "parent-link" / "victim-dir", Status.INVALID_ARGUMENT),
            (allowed / "kubelet-config", Status.FAILED_PRECONDITION),
        ):
            await fails(
                code,
                node.node_unpublish_volume(
                    csi.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=str(path))
                ),
            )
        assert (outside / "victim").read_text() == "precious"
        assert (outside / "victim-dir").is_dir()
        assert (allowed / "kubelet-config").read_text() == "precious too"
        # What kubelet leaves for a target that was never mounted is still cleaned up.
        (allowed / "empty-target").mkdir()
        await node.node_unpublish_volume(
            csi.NodeUnpublishVolumeRequest(
                volume_id=volume_id, target_path=str(allowed / "empty-target")
            )
        )
        assert not (allowed / "empty-target").exists()


# -- 3. mount flags -----------------------------------------------------------------------------

REFUSED_FLAGS = [
    "bind",
    "rbind",
    "remount",
    "move",
    "suid",
    "dev",
    "exec",
    "user",
    "defaults",
    "loop=/etc/passwd",
    "x-mount.mkdir",
    "X-mount.subdir=../../etc",
    "uid=0",
    "gid=0",
    "context=system_u:object_r:etc_t:s0",
    "errors=panic",
    "noatime,suid",
    "data=/etc/passwd",
]


async def test_refused_mount_flags_never_reach_mount(cleanup: Path) -> None:
    async with confined_driver(cleanup) as d:
        volume_id = await new_volume(d, "flags")
        staging, target = cleanup / "allowed" / "st", cleanup / "allowed" / "tg"
        for flag in REFUSED_FLAGS:
            cap = mount_capability(flags=("noatime", flag))
            for call in (
                d.client.controller.create_volume(
                    csi.CreateVolumeRequest(name=f"f-{flag}", volume_capabilities=[cap])
                ),
                d.client.node.node_stage_volume(stage_request(volume_id, staging, cap)),
                d.client.node.node_publish_volume(
                    publish_request(volume_id, staging, target, cap=cap)
                ),
            ):
                assert repr(flag) in await fails(Status.INVALID_ARGUMENT, call)
            reply = await d.client.controller.validate_volume_capabilities(
                csi.ValidateVolumeCapabilitiesRequest(
                    volume_id=volume_id, volume_capabilities=[cap]
                )
            )
            assert reply.confirmed is None
            assert repr(flag) in reply.message
        assert loops_under(cleanup) == []
        assert mounts_under(cleanup) == []
        listed = await d.client.controller.list_volumes(csi.ListVolumesRequest())
        assert [e.volume.volume_id for e in listed.entries if e.volume] == [volume_id]


async def test_the_operator_can_allow_one_more_flag(cleanup: Path) -> None:
    allowed = cleanup / "allowed"
    allowed.mkdir()
    async with serve_process(
        cleanup, "--allowed-path-root", str(allowed), "--allow-mount-flag", "exec"
    ) as server:
        client = Csi.connect(server.socket_path)
        try:
            cap = mount_capability(flags=("noexec", "exec"))
            reply = await client.controller.create_volume(
                csi.CreateVolumeRequest(name="exec", volume_capabilities=[cap])
            )
            volume_id = volume_id_of(reply)
            staging = allowed / "staging"
            await client.node.node_stage_volume(stage_request(volume_id, staging, cap))
            [entry] = [m for m in mounts() if m.mount_point == str(staging)]
            assert "noexec" not in entry.options  # the last of noexec/exec wins
            suid = mount_capability(flags=("suid",))
            await fails(
                Status.INVALID_ARGUMENT,
                client.node.node_stage_volume(stage_request(volume_id, staging, suid)),
            )
            await client.node.node_unstage_volume(
                csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=str(staging))
            )
            await client.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=volume_id))
        finally:
            client.channel.close()
    for flag in ("bind", "remount", "noatime,suid", "loop=/etc/passwd"):
        result = run_cli(
            [
                "serve",
                "--endpoint",
                str(cleanup / "x.sock"),
                "--pool",
                str(cleanup / "pool-x"),
                "--allow-mount-flag",
                flag,
            ]
        )
        assert result.returncode == 2, flag
        assert "--allow-mount-flag" in result.stderr
        assert not (cleanup / "pool-x").exists()


# Every allowed flag, in groups that mount together: the allow-list must not promise a flag
# that the kernel refuses (that would be an INTERNAL error at NodeStageVolume).
FLAG_GROUPS = {
    "ext4": [
        (
            "rw",
            "noatime",
            "nodiratime",
            "lazytime",
            "nosuid",
            "nodev",
            "noexec",
            "sync",
            "dirsync",
            "discard",
            "acl",
            "user_xattr",
            "barrier",
            "commit=86400",
            "stripe=8",
            "max_batch_time=15000",
            "min_batch_time=0",
            "data=journal",
            "errors=remount-ro",
        ),
        (
            "relatime",
            "nolazytime",
            "async",
            "nodiscard",
            "nobarrier",
            "data=writeback",
            "errors=continue",
            "commit=0",
        ),
        ("strictatime", "data=ordered"),
        ("ro", "norecovery"),
    ],
    "xfs": [
        (
            "rw",
            "noatime",
            "nodiratime",
            "lazytime",
            "nosuid",
            "nodev",
            "noexec",
            "sync",
            "dirsync",
            "discard",
            "inode64",
            "largeio",
            "logbufs=2",
            "allocsize=4k",
            "logbsize=16k",
        ),
        (
            "relatime",
            "nolazytime",
            "async",
            "nodiscard",
            "logbufs=8",
            "allocsize=1g",
            "logbsize=256K",
        ),
        ("ro", "norecovery", "strictatime"),
    ],
    "btrfs": [
        (
            "rw",
            "noatime",
            "nodiratime",
            "lazytime",
            "nosuid",
            "nodev",
            "noexec",
            "sync",
            "dirsync",
            "discard",
            "acl",
            "barrier",
            "ssd",
            "autodefrag",
            "commit=86400",
            "compress=zstd:15",
            "space_cache=v2",
        ),
        (
            "relatime",
            "nolazytime",
            "async",
            "nodiscard",
            "noacl",
            "nobarrier",
            "nossd",
            "noautodefrag",
            "compress-force=lzo",
            "commit=0",
        ),
        ("strictatime", "compress=zlib:9"),
        ("compress=no",),
        ("ro", "norecovery"),
    ],
}
SIZES = {"ext4": 16 * MiB, "xfs": 300 * MiB, "btrfs": 256 * MiB}


@pytest.mark.parametrize("fs_type", sorted(FLAG_GROUPS))
async def test_every_allowed_flag_mounts(cleanup: Path, fs_type: str) -> None:
    from aiocsi.engine.policy import (  # noqa: PLC0415 - the list under test
        FS_MOUNT_FLAGS,
        FS_VALUED_FLAGS,
        GENERIC_MOUNT_FLAGS,
    )

    groups = FLAG_GROUPS[fs_type]
    used = {flag.partition("=")[0] for group in groups for flag in group}
    assert used == GENERIC_MOUNT_FLAGS | FS_MOUNT_FLAGS[fs_type] | set(FS_VALUED_FLAGS[fs_type])
    async with confined_driver(cleanup) as d:
        reply = await d.client.controller.create_volume(
            csi.CreateVolumeRequest(
                name="every-flag",
                volume_capabilities=[mount_capability(fs_type)],
                capacity_range=csi.CapacityRange(required_bytes=SIZES[fs_type]),
            )
        )
        volume_id = volume_id_of(reply)
        staging = cleanup / "allowed" / "staging"
        for group in groups:
            cap = mount_capability(fs_type, flags=group)
            await d.client.node.node_stage_volume(stage_request(volume_id, staging, cap))
            [entry] = [m for m in mounts() if m.mount_point == str(staging)]
            assert entry.fs_type == fs_type
            assert ("ro" in entry.options) == ("ro" in group)
            await d.client.node.node_unstage_volume(
                csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=str(staging))
            )
        await d.client.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=volume_id))


# -- 4. secrets ---------------------------------------------------------------------------------


def _scan(paths: list[Path], needles: dict[str, bytes]) -> list[str]:
    """Which needles occur in which files (read whole: sparse images read back as zeros)."""
    found = []
    for path in paths:
        with path.open("rb") as handle:
            tail = b""
            while chunk := handle.read(8 * MiB):
                window = tail + chunk
                found += [f"{name} in {path}" for name, n in needles.items() if n in window]
                tail = window[-64:]
    return sorted(set(found))


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


@dataclass
class SecretCalls:
    """Hands out a fresh secret per call and remembers how the call should end."""

    client: Csi
    allowed: Path
    calls: list[tuple[str, str, str]]  # (rpc, secret, expected code)

    def secret(self, rpc: str, code: str) -> dict[str, str]:
        value = f"S3CR-{secrets.token_hex(10)}"
        self.calls.append((rpc, value, code))
        return {"token": value, "password": value + "-2"}

    @property
    def last(self) -> str:
        return self.calls[-1][1]

    async def expect(self, call: Awaitable[object]) -> None:
        assert await code_of(call) == self.calls[-1][2], self.calls[-1]

    def needles(self) -> dict[str, bytes]:
        return {value: value.encode() for _, value, _ in self.calls}


async def _volume_calls(c: SecretCalls) -> tuple[str, str]:
    ctl = c.client.controller

    async def create(name: str, capability: csi.VolumeCapability) -> str:
        reply = await ctl.create_volume(
            csi.CreateVolumeRequest(
                name=name,
                volume_capabilities=[capability],
                capacity_range=csi.CapacityRange(required_bytes=16 * MiB),
                secrets=c.secret("CreateVolume", "OK"),
            )
        )
        return volume_id_of(reply)

    a = await create("sec-a", mount_capability())
    s = c.secret("CreateVolume", "INVALID_ARGUMENT")
    await c.expect(
        ctl.create_volume(
            csi.CreateVolumeRequest(
                name="sec-bad",
                volume_capabilities=[mount_capability()],
                secrets=s,
                parameters={"preallocate": c.last, c.last: "true"},
            )
        )
    )
    b = await create("sec-b", block_capability())
    s = c.secret("ValidateVolumeCapabilities", "OK")
    await c.expect(
        ctl.validate_volume_capabilities(
            csi.ValidateVolumeCapabilitiesRequest(
                volume_id=a, volume_capabilities=[mount_capability()], secrets=s
            )
        )
    )
    s = c.secret("ValidateVolumeCapabilities", "NOT_FOUND")
    await c.expect(
        ctl.validate_volume_capabilities(
            csi.ValidateVolumeCapabilitiesRequest(
                volume_id=UNKNOWN, volume_capabilities=[mount_capability()], secrets=s
            )
        )
    )
    s = c.secret("ControllerPublishVolume", "OK")
    await c.expect(
        ctl.controller_publish_volume(
            csi.ControllerPublishVolumeRequest(
                volume_id=a, node_id=NODE, volume_capability=mount_capability(), secrets=s
            )
        )
    )
    s = c.secret("ControllerPublishVolume", "NOT_FOUND")
    await c.expect(
        ctl.controller_publish_volume(
            csi.ControllerPublishVolumeRequest(
                volume_id=a, node_id=c.last, volume_capability=mount_capability(), secrets=s
            )
        )
    )
    s = c.secret("ControllerUnpublishVolume", "OK")
    await c.expect(
        ctl.controller_unpublish_volume(
            csi.ControllerUnpublishVolumeRequest(volume_id=a, node_id=NODE, secrets=s)
        )
    )
    s = c.secret("ControllerUnpublishVolume", "INVALID_ARGUMENT")
    await c.expect(
        ctl.controller_unpublish_volume(
            csi.ControllerUnpublishVolumeRequest(volume_id=a, secrets={**s, **OVER_MAP})
        )
    )
    s = c.secret("ControllerModifyVolume", "OK")
    await c.expect(
        ctl.controller_modify_volume(
            csi.ControllerModifyVolumeRequest(
                volume_id=a, mutable_parameters={"preallocate": "false"}, secrets=s
            )
        )
    )
    s = c.secret("ControllerModifyVolume", "INVALID_ARGUMENT")
    await c.expect(
        ctl.controller_modify_volume(
            csi.ControllerModifyVolumeRequest(
                volume_id=a, mutable_parameters={"preallocate": c.last}, secrets=s
            )
        )
    )
    s = c.secret("ControllerExpandVolume", "OK")
    await c.expect(
        ctl.controller_expand_volume(
            csi.ControllerExpandVolumeRequest(
                volume_id=b, capacity_range=csi.CapacityRange(required_bytes=24 * MiB), secrets=s
            )
        )
    )
    s = c.secret("ControllerExpandVolume", "NOT_FOUND")
    await c.expect(
        ctl.controller_expand_volume(
            csi.ControllerExpandVolumeRequest(
                volume_id=c.last, capacity_range=csi.CapacityRange(required_bytes=MiB), secrets=s
            )
        )
    )
    return a, b


async def _snapshot_calls(c: SecretCalls, volume_id: str) -> None:
    ctl = c.client.controller
    reply = await ctl.create_snapshot(
        csi.CreateSnapshotRequest(
            name="sec-snap", source_volume_id=volume_id, secrets=c.secret("CreateSnapshot", "OK")
        )
    )
    assert reply.snapshot is not None
    snapshot_id = reply.snapshot.snapshot_id
    s = c.secret("CreateSnapshot", "INVALID_ARGUMENT")
    await c.expect(
        ctl.create_snapshot(
            csi.CreateSnapshotRequest(
                name="sec-snap-2", source_volume_id=volume_id, parameters={c.last: "x"}, secrets=s
            )
        )
    )
    s = c.secret("GetSnapshot", "OK")
    await c.expect(ctl.get_snapshot(csi.GetSnapshotRequest(snapshot_id=snapshot_id, secrets=s)))
    s = c.secret("GetSnapshot", "NOT_FOUND")
    await c.expect(ctl.get_snapshot(csi.GetSnapshotRequest(snapshot_id=c.last, secrets=s)))
    s = c.secret("ListSnapshots", "OK")
    await c.expect(ctl.list_snapshots(csi.ListSnapshotsRequest(secrets=s)))
    s = c.secret("ListSnapshots", "ABORTED")
    await c.expect(ctl.list_snapshots(csi.ListSnapshotsRequest(starting_token=c.last, secrets=s)))
    s = c.secret("DeleteSnapshot", "OK")
    await c.expect(
        ctl.delete_snapshot(csi.DeleteSnapshotRequest(snapshot_id=snapshot_id, secrets=s))
    )
    s = c.secret("DeleteSnapshot", "INVALID_ARGUMENT")
    await c.expect(
        ctl.delete_snapshot(csi.DeleteSnapshotRequest(snapshot_id=c.last + "\x00", secrets=s))
    )
    groups = csi.GroupControllerStub(c.client.channel)
    made = await groups.create_volume_group_snapshot(
        csi.CreateVolumeGroupSnapshotRequest(
            name="g",
            source_volume_ids=[volume_id],
            secrets=c.secret("CreateVolumeGroupSnapshot", "OK"),
        )
    )
    assert made.group_snapshot is not None
    group = made.group_snapshot
    s = c.secret("DeleteVolumeGroupSnapshot", "INVALID_ARGUMENT")
    await c.expect(
        groups.delete_volume_group_snapshot(
            csi.DeleteVolumeGroupSnapshotRequest(
                group_snapshot_id=group.group_snapshot_id, snapshot_ids=[c.last], secrets=s
            )
        )
    )
    s = c.secret("DeleteVolumeGroupSnapshot", "OK")
    await c.expect(
        groups.delete_volume_group_snapshot(
            csi.DeleteVolumeGroupSnapshotRequest(
                group_snapshot_id=group.group_snapshot_id,
                snapshot_ids=[m.snapshot_id for m in group.snapshots],
                secrets=s,
            )
        )
    )


async def _node_calls(c: SecretCalls, a: str, b: str) -> None:
    node, allowed = c.client.node, c.allowed
    s = c.secret("NodeStageVolume", "OK")
    await c.expect(node.node_stage_volume(stage_request(a, allowed / "st-a", secrets=s)))
    s = c.secret("NodeStageVolume", "INVALID_ARGUMENT")
    bad_flag = mount_capability(flags=(c.last,))
    await c.expect(node.node_stage_volume(stage_request(a, allowed / "st-a", bad_flag, s)))
    s = c.secret("NodePublishVolume", "OK")
    await c.expect(
        node.node_publish_volume(publish_request(a, allowed / "st-a", allowed / "tg-a", secrets=s))
    )
    s = c.secret("NodePublishVolume", "INVALID_ARGUMENT")
    await c.expect(
        node.node_publish_volume(publish_request(a, allowed / "st-a", f"/{c.last}/x", secrets=s))
    )
    await node.node_stage_volume(stage_request(b, allowed / "st-b", block_capability()))
    s = c.secret("NodePublishVolume", "OK")
    await c.expect(
        node.node_publish_volume(
            publish_request(
                b, allowed / "st-b", allowed / "tg-b", cap=block_capability(), secrets=s
            )
        )
    )
    s = c.secret("NodeExpandVolume", "OK")
    await c.expect(
        node.node_expand_volume(
            csi.NodeExpandVolumeRequest(
                volume_id=b,
                volume_path=str(allowed / "tg-b"),
                volume_capability=block_capability(),
                secrets=s,
            )
        )
    )
    s = c.secret("NodeExpandVolume", "NOT_FOUND")
    await c.expect(
        node.node_expand_volume(
            csi.NodeExpandVolumeRequest(
                volume_id=c.last, volume_path=str(allowed / "tg-b"), secrets=s
            )
        )
    )


async def _teardown_calls(c: SecretCalls, a: str, b: str) -> None:
    for volume_id, suffix in ((a, "a"), (b, "b")):
        await c.client.node.node_unpublish_volume(
            csi.NodeUnpublishVolumeRequest(
                volume_id=volume_id, target_path=str(c.allowed / f"tg-{suffix}")
            )
        )
        await c.client.node.node_unstage_volume(
            csi.NodeUnstageVolumeRequest(
                volume_id=volume_id, staging_target_path=str(c.allowed / f"st-{suffix}")
            )
        )
        s = c.secret("DeleteVolume", "OK")
        await c.expect(
            c.client.controller.delete_volume(
                csi.DeleteVolumeRequest(volume_id=volume_id, secrets=s)
            )
        )
    s = c.secret("DeleteVolume", "INVALID_ARGUMENT")
    await c.expect(
        c.client.controller.delete_volume(
            csi.DeleteVolumeRequest(volume_id=f"{c.last}\x00", secrets=s)
        )
    )


async def test_secrets_never_reach_any_byte_the_driver_writes(cleanup: Path) -> None:
    """A distinctive secret in every RPC that carries `secrets`, in calls that succeed and
    calls that fail (where the secret is also the offending value), at --log-level debug:
    then every byte the driver wrote is searched for it (stdout, stderr, the pool: images,
    database, WAL)."""
    allowed = cleanup / "allowed"
    allowed.mkdir()
    async with serve_process(
        cleanup,
        "--log-level",
        "debug",
        "--enable-attach",
        "true",
        "--allowed-path-root",
        str(allowed),
    ) as server:
        c = SecretCalls(Csi.connect(server.socket_path), allowed, [])
        try:
            a, b = await _volume_calls(c)
            await _snapshot_calls(c, a)
            await _node_calls(c, a, b)
            # While everything exists: the images, the live database and its WAL.
            live = _scan(
                [*_files_under(cleanup / "pool"), server.stdout_path, server.stderr_path],
                c.needles(),
            )
            await _teardown_calls(c, a, b)
        finally:
            c.client.channel.close()
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
    assert live == []
    assert _scan(_files_under(cleanup), c.needles()) == []
    # Each call was made and ended as planned; the debug log shows its request, redacted.
    events = server.log_lines()
    rpcs = {(e["method"], e["grpc_code"]) for e in events if e["event"] == "rpc"}
    assert {(rpc, code) for rpc, _, code in c.calls} <= rpcs
    requests = [e["request"] for e in events if e["event"] == "rpc_request"]
    assert all(isinstance(r, dict) for r in requests)
    redacted = [r for r in requests if isinstance(r, dict) and "secrets" in r]
    # Every call but the one with an oversized map, refused before it is logged.
    assert len(redacted) >= len(c.calls) - 1
    assert all(r["secrets"] == "***" for r in redacted)


# -- 5. socket directory ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "why"),
    [
        ({"sock": 0o777}, "socket directory {sock} is world-writable"),
        ({"sock": 0o1777}, "socket directory {sock} is world-writable"),
        ({"parent": 0o777, "sock": 0o700}, "{parent} is world-writable without the sticky bit"),
    ],
)
def test_a_socket_directory_others_can_write_is_refused(
    cleanup: Path, layout: dict[str, int], why: str
) -> None:
    parent = cleanup / "parent"
    sock_dir = parent / "sock"
    sock_dir.mkdir(parents=True)
    sock_dir.chmod(layout["sock"])
    parent.chmod(layout.get("parent", 0o700))
    result = run_cli(
        [
            "serve",
            "--endpoint",
            f"unix://{sock_dir}/csi.sock",
            "--pool",
            str(cleanup / "pool"),
            "--node-id",
            NODE,
        ]
    )
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert why.format(sock=sock_dir, parent=parent) in line
    assert not (sock_dir / "csi.sock").exists()
    assert not (cleanup / "pool").exists()  # refused before the pool was touched


async def test_a_sticky_world_writable_parent_is_accepted(cleanup: Path) -> None:
    # The layout every test uses: /tmp (1777) / private dir (0700) / socket.
    parent = cleanup / "tmp-like"
    (parent / "private").mkdir(parents=True, mode=0o700)
    parent.chmod(0o1777)
    async with serve_process(cleanup, socket_path=parent / "private" / "csi.sock") as server:
        assert stat.S_IMODE(server.socket_path.stat().st_mode) == 0o660


# -- 7. resource exhaustion ---------------------------------------------------------------------


def shim_dir(root: Path, tool: str, script: str) -> Path:
    bindir = root / "shims"
    bindir.mkdir(exist_ok=True)
    shim = bindir / tool
    shim.write_text("#!/bin/sh\n" + script)
    shim.chmod(0o755)
    return bindir


def with_path(monkeypatch: pytest.MonkeyPatch, bindir: Path) -> None:
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")


async def _stage_fails_then_recovers(
    d: Driver, monkeypatch: pytest.MonkeyPatch, break_host: Callable[[], None], status: Status
) -> str:
    """Stage with `break_host` applied (through `monkeypatch`): it fails with `status` and
    rolls back; once repaired, a stage elsewhere works."""
    volume_id = await new_volume(d, "exhausted")
    image = d.pool / "volumes" / f"{volume_id}.img"
    staging = d.root / "allowed" / "staging"
    break_host()
    message = await fails(
        status, d.client.node.node_stage_volume(stage_request(volume_id, staging))
    )
    # Rolled back completely: no loop device, no mount, no directory, no stage record
    # (a stage at another path would be FAILED_PRECONDITION if one had been kept).
    assert loops_under(d.root) == []
    assert mounts_under(d.root) == []
    assert not staging.exists()
    monkeypatch.undo()
    elsewhere = d.root / "allowed" / "elsewhere"
    await d.client.node.node_stage_volume(stage_request(volume_id, elsewhere))
    [entry] = [m for m in mounts() if m.mount_point == str(elsewhere)]
    assert entry.fs_type == "ext4"
    (elsewhere / "data").write_text("usable")
    await d.client.node.node_unstage_volume(
        csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=str(elsewhere))
    )
    assert loops_under(d.root) == []
    assert image.exists()
    await d.client.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=volume_id))
    return message


class _NoFreeLoopDevice:
    """fcntl as the loop driver answers once no loop device can be made: a system this test
    cannot produce for real without exhausting the node's loop devices."""

    def __getattr__(self, name: str) -> object:
        return getattr(fcntl, name)

    @staticmethod
    def ioctl(fd: int, request: int, arg: int | bytes = 0) -> int | bytes:
        if request == syscalls.LOOP_CTL_GET_FREE:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fcntl.ioctl(fd, request, arg)


async def test_no_free_loop_device_is_resource_exhausted(
    cleanup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with confined_driver(cleanup) as d:
        message = await _stage_fails_then_recovers(
            d,
            monkeypatch,
            lambda: monkeypatch.setattr(syscalls, "fcntl", _NoFreeLoopDevice()),
            Status.RESOURCE_EXHAUSTED,
        )
    assert "no free loop device" in message


async def test_mkfs_failing_half_way_is_internal_and_rolls_back(
    cleanup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Writes into the device, as a real mkfs does before it fails, then fails.
    bindir = shim_dir(
        cleanup,
        "mkfs.ext4",
        """\
for device; do :; done
head -c 65536 /dev/urandom | dd of="$device" bs=4096 seek=1 conv=notrunc status=none
echo "mkfs.ext4: Input/output error while writing out and closing file system" >&2
exit 1
""",
    )
    async with confined_driver(cleanup) as d:
        message = await _stage_fails_then_recovers(
            d, monkeypatch, lambda: with_path(monkeypatch, bindir), Status.INTERNAL
        )
    assert "mkfs.ext4 exited with 1" in message
    assert "Input/output error while writing out" in message


# -- the interceptor's answers to malformed calls, logged once, never UNKNOWN ------------------


class RawCodec(CodecBase):
    """Sends bytes as they are: lets a test put any body on the wire."""

    __content_subtype__ = "proto"

    def encode(self, message: bytes, message_type: object) -> bytes:  # noqa: ARG002 - API
        return message

    def decode(self, data: bytes, message_type: object) -> bytes:  # noqa: ARG002 - API
        return data


async def test_malformed_bodies_are_logged_as_the_callers_error(cleanup: Path) -> None:
    async with serve_process(cleanup) as server:
        raw = Channel(path=str(server.socket_path), codec=RawCodec())
        client = Csi.connect(server.socket_path)
        try:
            async with raw.request(
                "/csi.v1.Identity/Probe", Cardinality.UNARY_UNARY, bytes, bytes
            ) as stream:
                await stream.send_message(b"\x0a\x80\x80\x80", end=True)
                with pytest.raises(GRPCError) as err:
                    await stream.recv_message()
            assert err.value.status is Status.INVALID_ARGUMENT
            assert (await client.identity.probe(csi.ProbeRequest())).ready
        finally:
            raw.close()
            client.channel.close()
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
    events = server.log_lines()
    assert [(e["method"], e["grpc_code"]) for e in events if e["event"] == "rpc"] == [
        ("Probe", "INVALID_ARGUMENT"),
        ("Probe", "OK"),
    ]
    assert [e for e in events if e["level"] == "error"] == []
    assert "Traceback" not in json.dumps(events)
    assert server.stderr_path.read_bytes() == b""
