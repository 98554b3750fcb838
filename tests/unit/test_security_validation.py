"""Hostile input at the validation layer: generic size limits, mount flags per filesystem,
operator-allowed flags, and fields aiocsi refuses rather than ignores (no I/O)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiocsi._proto.csi import v1 as csi
from aiocsi.engine import policy
from aiocsi.errors import InvalidArgument
from aiocsi.services.validation import common
from aiocsi.services.validation import controller as controller_check

from .translated import node_capability, publish

Mode = csi.VolumeCapabilityAccessModeMode


def mount_cap(
    *flags: str, fs_type: str = "ext4", mode: Mode = Mode.SINGLE_NODE_WRITER
) -> csi.VolumeCapability:
    return csi.VolumeCapability(
        mount=csi.VolumeCapabilityMountVolume(fs_type=fs_type, mount_flags=list(flags)),
        access_mode=csi.VolumeCapabilityAccessMode(mode=mode),
    )


# -- request_limits: every string and map of every request ---------------------------------

SECRETS_OVER = {f"k{i}": "v" * 100 for i in range(41)}  # 41 * 103 bytes > 4 KiB


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (csi.DeleteSnapshotRequest(snapshot_id="snap-x", secrets=SECRETS_OVER), "secrets"),
        (csi.GetSnapshotRequest(snapshot_id="snap-x", secrets=SECRETS_OVER), "secrets"),
        (csi.ListSnapshotsRequest(secrets=SECRETS_OVER), "secrets"),
        (csi.ControllerUnpublishVolumeRequest(volume_id="v", secrets=SECRETS_OVER), "secrets"),
        (csi.NodeExpandVolumeRequest(volume_id="v", secrets=SECRETS_OVER), "secrets"),
        (csi.ListVolumesRequest(starting_token="1" * 129), "starting_token"),
        (csi.NodeGetVolumeStatsRequest(volume_id="v" * 129), "volume_id"),
        (
            csi.GetCapacityRequest(accessible_topology=csi.Topology(segments=SECRETS_OVER)),
            "accessible_topology.segments",
        ),
        (
            csi.CreateVolumeRequest(volume_capabilities=[mount_cap(), mount_cap("x" * 129)]),
            "volume_capabilities[1].mount.mount_flags[0]",
        ),
        (
            csi.ValidateVolumeCapabilitiesRequest(volume_id="v", parameters=SECRETS_OVER),
            "parameters",
        ),
        (
            csi.CreateVolumeRequest(
                volume_content_source=csi.VolumeContentSource(
                    snapshot=csi.VolumeContentSourceSnapshotSource(snapshot_id="s" * 200)
                )
            ),
            "volume_content_source.snapshot.snapshot_id",
        ),
        (csi.NodePublishVolumeRequest(target_path="/" + "p" * 4096), "target_path"),
        # A multi-byte character counts with its UTF-8 size: 43 * 3 bytes > 128.
        (csi.CreateVolumeRequest(name="€" * 43), "name"),
    ],
)
def test_request_limits_name_the_oversized_field(message: object, field: str) -> None:
    with pytest.raises(InvalidArgument, match=rf"^{re.escape(field)} is \d+ bytes"):
        common.request_limits(message)


def test_request_limits_accept_what_the_spec_allows() -> None:
    common.request_limits(
        csi.NodeStageVolumeRequest(
            volume_id="v" * 128,
            staging_target_path="/" + "p" * 4095,
            secrets={"k": "v" * 4095},
            volume_context={"€": "x" * (4096 - 3)},
            volume_capability=mount_cap(*(["noatime"] * 50)),
        )
    )
    common.request_limits(csi.ProbeRequest())


@given(st.dictionaries(st.text(max_size=40), st.text(max_size=200), max_size=40))
def test_map_limit_counts_utf8_bytes_of_keys_and_values(secrets: dict[str, str]) -> None:
    size = sum(len(k.encode()) + len(v.encode()) for k, v in secrets.items())
    request = csi.DeleteVolumeRequest(volume_id="v", secrets=secrets)
    if size <= common.MAX_MAP_BYTES:
        common.request_limits(request)
    else:
        with pytest.raises(InvalidArgument, match="secrets"):
            common.request_limits(request)


def test_volume_mount_group_is_carried_for_the_engine() -> None:
    cap = mount_cap()
    assert cap.mount is not None
    cap.mount.volume_mount_group = "1000"
    assert node_capability(cap).mount_group == "1000"
    cap.mount.volume_mount_group = "1\x000"
    with pytest.raises(InvalidArgument, match="volume_mount_group"):
        node_capability(cap)


def test_both_access_types_and_unknown_modes_are_refused() -> None:
    both = mount_cap()
    both.block = csi.VolumeCapabilityBlockVolume()
    with pytest.raises(InvalidArgument, match="both block and mount"):
        node_capability(both)
    # What betterproto2 makes of an enum value the proto does not define (wire value 99).
    odd = csi.VolumeCapability.parse(
        bytes(csi.VolumeCapability(mount=csi.VolumeCapabilityMountVolume())) + b"\x1a\x02\x08\x63"
    )
    with pytest.raises(InvalidArgument, match=r"access_mode .* is unknown"):
        node_capability(odd)


# -- mount flags per filesystem --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fs_type", "flags"),
    [
        ("ext4", ("noatime", "commit=30", "data=journal", "errors=remount-ro", "acl")),
        ("ext4", ("stripe=0", "max_batch_time=0", "min_batch_time=999999999", "nobarrier")),
        ("xfs", ("inode64", "largeio", "logbufs=8", "allocsize=1g", "logbsize=256k")),
        ("xfs", ("allocsize=64K", "allocsize=65536", "logbsize=32K", "discard")),
        ("btrfs", ("compress=zstd:15", "compress-force=lzo", "space_cache=v2", "ssd", "noacl")),
        ("ext4", ("ro", "norecovery")),
        ("", ("noatime", "nosuid", "nodev", "noexec", "lazytime", "sync", "dirsync")),
    ],
)
def test_flags_each_filesystem_mounts_with(fs_type: str, flags: tuple[str, ...]) -> None:
    assert node_capability(mount_cap(*flags, fs_type=fs_type)).mount_flags == flags


@pytest.mark.parametrize(
    ("fs_type", "flag", "why"),
    [
        # measured: the kernel refuses these on the filesystem named
        ("ext4", "noacl", "not allowed on ext4"),
        ("ext4", "nouser_xattr", "not allowed"),
        ("ext4", "stride=4", "not allowed"),
        ("ext4", "commit=2147484", "not allowed"),
        ("xfs", "acl", "not allowed on xfs"),
        ("xfs", "logbufs=9", "not allowed"),
        ("xfs", "logbsize=7", "not allowed"),
        ("xfs", "logbsize=512k", "not allowed"),
        ("xfs", "allocsize=3k", "not allowed"),
        ("xfs", "allocsize=2g", "not allowed"),
        ("btrfs", "space_cache=v1", "not allowed"),
        ("btrfs", "compress=zstd:16", "not allowed"),
        ("btrfs", "data=journal", "not allowed on btrfs"),
        # filesystem-specific flags need the capability to name the filesystem
        ("", "commit=30", "without fs_type"),
        ("", "compress=zstd", "without fs_type"),
        # the kernel refuses norecovery on a read-write mount
        ("xfs", "norecovery", "read-only"),
        ("btrfs", "norecovery", "read-only"),
    ],
)
def test_flags_a_filesystem_would_refuse(fs_type: str, flag: str, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        node_capability(mount_cap(flag, fs_type=fs_type))


def test_norecovery_follows_the_last_of_ro_and_rw_and_the_access_mode() -> None:
    node_capability(mount_cap("norecovery", fs_type="xfs", mode=Mode.SINGLE_NODE_READER_ONLY))
    node_capability(mount_cap("rw", "ro", "norecovery", fs_type="xfs"))
    with pytest.raises(InvalidArgument, match="read-only"):
        node_capability(mount_cap("ro", "norecovery", "rw", fs_type="xfs"))


def test_too_many_flags_together_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="1024 bytes of mount options"):
        node_capability(mount_cap(*(["noatime"] * 200)))


def test_create_volume_checks_flags_against_the_filesystem_too() -> None:
    request = csi.CreateVolumeRequest(
        name="v", volume_capabilities=[mount_cap("noatime"), mount_cap("compress=zstd")]
    )
    with pytest.raises(InvalidArgument, match=r"volume_capabilities\[1\].*'compress=zstd'"):
        policy.create_request(controller_check.create_volume(request), frozenset())


# -- operator-allowed flags -------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["exec", "suid", "dev", "uid=1000", "context=system_u:r:t:s0"])
def test_operator_can_allow_one_exact_option(flag: str) -> None:
    allowed = frozenset({policy.operator_mount_flag(flag)})
    cap = node_capability(mount_cap("noatime", flag), allowed)
    assert cap.mount_flags == ("noatime", flag)
    with pytest.raises(InvalidArgument, match="not allowed"):
        node_capability(mount_cap(flag))
    with pytest.raises(InvalidArgument, match="not allowed"):
        node_capability(mount_cap(flag + "x"), allowed)


@pytest.mark.parametrize(
    "flag",
    [
        "bind",
        "rbind",
        "move",
        "remount",
        "loop",
        "loop=/dev/loop0",
        "offset=0",
        "Bind",
        "X-mount.mkdir",
        "x-mount.subdir=a",
        "make-shared",
        "helper=x",
        "exec,suid",
        "data=/etc",
        "uid=0 gid=0",
        "a\x00",
        "",
        "=x",
        'context="a"',
    ],
)
def test_operator_can_never_allow(flag: str) -> None:
    with pytest.raises(ValueError, match="mount flag"):
        policy.operator_mount_flag(flag)


# -- inline ephemeral volume size --------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "why"), [("lots", "expected an integer"), ("9" * 30, "more than CSI can express")]
)
def test_ephemeral_size_is_checked_before_anything_is_made(size: str, why: str) -> None:
    request = csi.NodePublishVolumeRequest(
        volume_id="csi-1",
        target_path="/var/lib/kubelet/pods/p/v",
        volume_capability=mount_cap(),
        volume_context={"csi.storage.k8s.io/ephemeral": "true", "size": size},
    )
    with pytest.raises(InvalidArgument, match=why):
        publish(request)


def test_an_inline_volume_may_not_be_named_like_a_driver_volume() -> None:
    request = csi.NodePublishVolumeRequest(
        volume_id="vol-" + "a" * 32,
        target_path="/var/lib/kubelet/pods/p/v",
        volume_capability=mount_cap(),
        volume_context={"csi.storage.k8s.io/ephemeral": "true"},
    )
    with pytest.raises(InvalidArgument, match="inline ephemeral volume"):
        publish(request)
    request.volume_id = "csi-" + "a" * 32
    assert publish(request).volume_id == "csi-" + "a" * 32


@pytest.mark.parametrize(
    ("staging", "target"),
    [("/r/st", "/r/st"), ("/r/st", "/r/st/pod"), ("/r/pod/st", "/r/pod"), ("/r/st/", "/r/st")],
)
def test_target_and_staging_paths_stay_apart(staging: str, target: str) -> None:
    request = csi.NodePublishVolumeRequest(
        volume_id="vol-1",
        staging_target_path=staging,
        target_path=target,
        volume_capability=mount_cap(),
    )
    with pytest.raises(InvalidArgument, match="one inside the other"):
        publish(request)
    request.target_path = "/r/stx"  # a sibling that merely shares a prefix is fine
    assert publish(request).target_path == "/r/stx"
