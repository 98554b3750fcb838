"""The Flexvolume front end's pure parts: the executable's own answers, option parsing, the
kubelet's pod dir layout, and the superblock sizes expandfs checks."""

from __future__ import annotations

import json

import pytest

from aiocsi.errors import InvalidArgument
from aiocsi.flexvolume import executable
from aiocsi.flexvolume import options as opts
from aiocsi.flexvolume.frontend import FlexvolumeFrontEnd

ROOT = "/var/lib/kubelet"
POD_DIR = f"{ROOT}/pods/1234-abcd/volumes/aiocsi.dev~loop/data"


def test_the_executable_forwards_exactly_the_ops_the_driver_serves() -> None:
    assert set(executable.DRIVER_OPS) == set(FlexvolumeFrontEnd.OPS)
    for op in ("attach", "detach", "waitforattach", "isattached", "mountdevice"):
        assert executable.answer([op]) == {
            "status": "Not supported",
            "message": f"{op} is not supported by aiocsi.dev/loop",
        }


def test_the_executable_drops_secrets_and_refuses_bad_json_without_echoing_it() -> None:
    request = json.loads(
        executable._request(
            "mount", ["/d", json.dumps({"a": "1", "kubernetes.io/secret/pw": "c2VjcmV0"})]
        )
    )
    assert json.loads(request["args"][1]) == {"a": "1"}
    with pytest.raises(executable.Refused) as refused:
        executable._request("mount", ["/d", '{"kubernetes.io/secret/pw": "c2VjcmV0"'])
    assert "c2VjcmV0" not in str(refused.value)
    assert executable.exit_code({"status": "Failure"}) == 1
    assert executable.exit_code({"status": "Not supported"}) == 0


def test_mount_options() -> None:
    parsed = opts.mount_options(
        {
            "kubernetes.io/fsType": "",
            "kubernetes.io/readwrite": "ro",
            "kubernetes.io/pvOrVolumeName": "pv-1",
            "kubernetes.io/pod.uid": "1234",
            "size": "2Gi",
            "preallocate": "TRUE",
        }
    )
    assert parsed == opts.MountOptions(
        name="pv-1",
        fs_type="ext4",
        read_only=True,
        size_bytes=2 << 30,
        ephemeral=False,
        parameters={"preallocate": "true"},
    )
    assert opts.mount_options({"volumeName": "v", "kubernetes.io/pvOrVolumeName": "p"}).name == "v"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, "name no volume"),
        ({"volumeName": "x" * 254}, "longer than 253 bytes"),
        ({"volumeName": "v", "size": "1Xi"}, "option size"),
        ({"volumeName": "v", "kubernetes.io/readwrite": "rx"}, "neither ro nor rw"),
        ({"volumeName": "v", "kubernetes.io/fsType": "ntfs"}, "fsType 'ntfs'"),
        ({"volumeName": "v", "colour": "red"}, "unknown key 'colour'"),
        ({"ephemeral": "true", "preallocate": "true"}, "takes no StorageClass parameters"),
    ],
)
def test_bad_mount_options(given: dict[str, str], expected: str) -> None:
    with pytest.raises(InvalidArgument, match=expected):
        opts.mount_options(given)


def test_options_must_be_strings_and_lose_their_secrets() -> None:
    assert opts.strings({"a": "1", "kubernetes.io/secret/k": 5}) == {"a": "1"}
    with pytest.raises(InvalidArgument, match="must be a string"):
        opts.strings({"size": 5})
    assert opts.secret_values({"kubernetes.io/secret/k": "djE=", "x": "y"}) == {"djE="}


def test_pod_dirs_and_their_staging_path() -> None:
    pod = opts.require_pod_dir(POD_DIR)
    assert (pod.kubelet_root, pod.pod_uid, pod.volume) == (ROOT, "1234-abcd", "data")
    assert pod.staging_path("vol-1") == (
        f"{ROOT}/plugins/kubernetes.io/flexvolume/aiocsi.dev/loop/mounts/vol-1"
    )
    assert pod.pod_volume_id == "flexvolume:1234-abcd:data"
    assert opts.pod_dir(f"{ROOT}/pods/1234/volumes/other~driver/data") is None
    with pytest.raises(InvalidArgument, match="not a kubelet pod volume dir"):
        opts.require_pod_dir("/mnt/data")


@pytest.mark.parametrize(
    ("path", "expected"),
    [("", "empty"), ("rel/dir", "absolute"), ("/a/../b", "normalised"), ("/a//b", "normalised")],
)
def test_bad_directories(path: str, expected: str) -> None:
    with pytest.raises(InvalidArgument, match=expected):
        opts.directory(path)


def test_new_bytes() -> None:
    assert opts.new_bytes("1073741824") == 1 << 30
    for bad in ("", "-1", "1e9", "²", "9" * 30):
        with pytest.raises(InvalidArgument):
            opts.new_bytes(bad)
