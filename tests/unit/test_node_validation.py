"""Node request validation: the mount flag allow-list and the path rules (no I/O)."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiocsi._proto.csi import v1 as csi
from aiocsi.engine import policy
from aiocsi.errors import InvalidArgument
from aiocsi.models import AccessType
from aiocsi.services.validation import node as check

from .translated import node_capability, publish

Mode = csi.VolumeCapabilityAccessModeMode


ROOT = Path("/var/lib/kubelet")
ROOTS = (ROOT, Path("/mnt/extra"))


def mount_cap(*flags: str, fs_type: str = "ext4") -> csi.VolumeCapability:
    return csi.VolumeCapability(
        mount=csi.VolumeCapabilityMountVolume(fs_type=fs_type, mount_flags=list(flags)),
        access_mode=csi.VolumeCapabilityAccessMode(mode=Mode.SINGLE_NODE_WRITER),
    )


# -- mount flags --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag",
    [
        "noatime",
        "nodiratime",
        "relatime",
        "ro",
        "nosuid",
        "nodev",
        "noexec",
        "discard",
        "commit=30",
        "data=writeback",
        "errors=remount-ro",
        "errors=continue",
        "compress=zstd:3",
        "compress=no",
        "allocsize=64k",
        "logbsize=256K",
        "space_cache=v2",
    ],
)
def test_allowed_mount_flags(flag: str) -> None:
    assert policy.mount_flag(flag) == flag


@pytest.mark.parametrize(
    "flag",
    [
        # privileges and devices
        "suid",
        "dev",
        "exec",
        "user",
        "users",
        "owner",
        # other paths, other mounts
        "bind",
        "rbind",
        "remount",
        "move",
        "loop",
        "loop=/dev/loop0",
        "x-foo",
        "x-mount.mkdir",
        "defaults",
        "auto",
        "_netdev",
        # identities and labels
        "uid=0",
        "gid=0",
        "context=system_u:object_r:tmp_t:s0",
        "fscontext=x",
        # injection: several options in one flag, or a value that carries more
        "uid=0,gid=0",
        "noatime,suid",
        "data=ordered,suid",
        "commit=5,dev",
        "compress=zstd,dev",
        # values of the wrong shape, or dangerous ones
        "errors=panic",
        "commit=5x",
        "commit=",
        "commit=-1",
        "data=/etc",
        "allocsize=1T",
        # blanks and case
        "",
        " noatime",
        "noatime ",
        "NOATIME",
        "=noatime",
        "noatime=1",
    ],
)
def test_refused_mount_flags(flag: str) -> None:
    with pytest.raises(InvalidArgument, match="not allowed"):
        policy.mount_flag(flag)


def test_capability_flags_are_all_checked() -> None:
    cap = node_capability(mount_cap("noatime", "commit=15"))
    assert cap.mount_flags == ("noatime", "commit=15")
    with pytest.raises(InvalidArgument, match="'suid'"):
        node_capability(mount_cap("noatime", "suid"))


def test_capability_is_required_with_a_mode_and_a_type() -> None:
    with pytest.raises(InvalidArgument, match="volume_capability is required"):
        node_capability(None)
    with pytest.raises(InvalidArgument, match="access_mode"):
        node_capability(csi.VolumeCapability(mount=csi.VolumeCapabilityMountVolume()))
    no_type = csi.VolumeCapability(
        access_mode=csi.VolumeCapabilityAccessMode(mode=Mode.SINGLE_NODE_WRITER)
    )
    with pytest.raises(InvalidArgument, match="access type"):
        node_capability(no_type)


# -- paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/var/lib/kubelet/pods/x/volumes/v", "/var/lib/kubelet/pods/x/volumes/v"),
        ("/var/lib/kubelet/pods/x/", "/var/lib/kubelet/pods/x"),
        ("/mnt/extra/a b/c", "/mnt/extra/a b/c"),
        ("/var/lib/kubelet/..hidden", "/var/lib/kubelet/..hidden"),
    ],
)
def test_accepted_paths(value: str, expected: str) -> None:
    assert check.path(value, "target_path", ROOTS) == expected


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "required"),
        ("relative/path", "absolute"),
        ("./var/lib/kubelet/x", "absolute"),
        ("some/path", "absolute"),
        ("/", "normalised"),
        ("///", "normalised"),
        ("//var/lib/kubelet/x", "normalised"),
        ("/var/lib/kubelet//x", "normalised"),
        ("/var/lib/kubelet/x/../y", "normalised"),
        ("/var/lib/kubelet/../../etc", "normalised"),
        ("/var/lib/kubelet/./x", "normalised"),
        ("/var/lib/kubelet", "allowed path root"),
        ("/var/lib/kubelet/", "allowed path root"),
        ("/var/lib/kubeletx/y", "allowed path root"),
        ("/etc/x", "allowed path root"),
        ("/mnt", "allowed path root"),
        ("/var/lib/kubelet/\x00x", "NUL"),
        ("/var/lib/kubelet/" + "x" * 4096, "at most 4096"),
    ],
)
def test_refused_paths(value: str, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        check.path(value, "target_path", ROOTS)


def test_no_roots_means_any_absolute_path() -> None:
    assert check.path("/srv/x", "target_path") == "/srv/x"


@given(st.lists(st.sampled_from(["a", "b", ".", "..", "", "kubelet", "/"]), max_size=8))
def test_accepted_paths_are_normalised_and_under_a_root(parts: list[str]) -> None:
    value = str(ROOT) + "/" + "/".join(parts)
    try:
        accepted = check.path(value, "target_path", ROOTS)
    except InvalidArgument:
        return
    assert os.path.normpath(accepted) == accepted
    assert PurePosixPath(accepted).is_relative_to(ROOT)
    assert accepted != str(ROOT)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("some/path", "some/path"), ("/a/b/", "/a/b"), ("/a/./b", "/a/b"), ("/x", "/x")],
)
def test_lookup_paths_are_not_judged(value: str, expected: str) -> None:
    # Stats and expand only look a path up: one where nothing is published is NOT_FOUND.
    assert check.lookup_path(value, "volume_path") == expected


def test_lookup_path_is_required() -> None:
    with pytest.raises(InvalidArgument, match="volume_path is required"):
        check.lookup_path("", "volume_path")


# -- whole requests -------------------------------------------------------------------------


def test_stage_request() -> None:
    request = csi.NodeStageVolumeRequest(
        volume_id="vol-1",
        staging_target_path="/var/lib/kubelet/plugins/x/globalmount/",
        volume_capability=mount_cap("noatime"),
    )
    staged = check.stage(request, ROOTS)
    assert staged.staging_path == "/var/lib/kubelet/plugins/x/globalmount"
    assert staged.capability.access_type is AccessType.MOUNT
    request.staging_target_path = "/tmp/elsewhere"
    with pytest.raises(InvalidArgument, match="staging_target_path"):
        check.stage(request, ROOTS)


def test_publish_request_needs_a_staging_path_unless_ephemeral() -> None:
    request = csi.NodePublishVolumeRequest(
        volume_id="csi-abc",
        target_path="/var/lib/kubelet/pods/p/volumes/v",
        volume_capability=mount_cap(),
        readonly=True,
    )
    with pytest.raises(InvalidArgument, match="staging_target_path is required"):
        publish(request, ROOTS)
    request.volume_context = {"csi.storage.k8s.io/ephemeral": "true"}
    published = publish(request, ROOTS)
    assert (published.staging_path, published.read_only) == ("", True)
    request.volume_context = {"csi.storage.k8s.io/ephemeral": "false"}
    with pytest.raises(InvalidArgument, match="staging_target_path is required"):
        publish(request, ROOTS)
