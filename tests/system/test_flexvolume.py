"""Flexvolume through the installed executable, exec'd as the kubelet does, against a real
`aiocsi serve` with real loop devices and mounts (docs/flexvolume.md)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from .flexvolume_kubelet import (
    SECRET,
    SECRET_B64,
    flex_driver,
    flexvolume_lines,
    install,
    kubelet_options,
    mounts_under,
)

MiB = 1024 * 1024
CAP_SYS_RESOURCE = 24
POD_A = "0b6c3c1e-8f2a-4f0e-9d55-1a2b3c4d5e6f"
POD_B = "7d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
UNSUPPORTED = (
    ("attach", "{}", "node-1"),
    ("detach", "pv-1", "node-1"),
    ("waitforattach", "/dev/loop0", "{}"),
    ("isattached", "{}", "node-1"),
    ("mountdevice", "/tmp/x", "/dev/loop0", "{}"),
    ("unmountdevice", "/tmp/x"),
    ("expandvolume", "{}", "1", "0"),
    ("frobnicate",),
)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, timeout=30)


def _volumes(pool: Path) -> list[str]:
    return sorted(p.name for p in (pool / "volumes").iterdir())


async def test_init_answers_alone_and_fast(cleanup: Path) -> None:
    kubelet = install(cleanup)  # no driver at all: init must not need one
    answer = kubelet.ok("init")
    assert answer.reply == {
        "status": "Success",
        "capabilities": {
            "attach": False,
            "selinuxRelabel": True,
            "fsGroup": True,
            "supportsMetrics": True,
            "requiresFSResize": True,
        },
    }
    median_ms = kubelet.timed(15, "init")
    assert median_ms < 150, f"init took {median_ms:.1f} ms (median)"


async def test_mount_write_unmount_mount_read(cleanup: Path) -> None:
    kubelet = install(cleanup)
    async with flex_driver(cleanup) as server:
        target = kubelet.mount(POD_A, "pv-data", size="32Mi")
        (target / "hello").write_text("kept")
        staged = list(kubelet.staging_root.iterdir())
        assert len(staged) == 1
        assert len(mounts_under(cleanup)) == 2  # the staged mount and the pod's bind
        kubelet.unmount(target)
        assert mounts_under(cleanup) == []
        assert not kubelet.staging_root.joinpath(staged[0].name).exists()
        target = kubelet.mount(POD_B, "pv-data", size="32Mi")
        assert (target / "hello").read_text() == "kept"
        kubelet.unmount(target)
        assert mounts_under(cleanup) == []
        # A line is written after its reply: read them once the driver has flushed and
        # stopped, not while the last one may still be on its way.
        server.signal()
        assert await server.wait() == 0
        lines = flexvolume_lines(server)
    assert [(line["op"], line["result"]) for line in lines] == [
        ("mount", "Success"),
        ("unmount", "Success"),
        ("mount", "Success"),
        ("unmount", "Success"),
    ]
    assert all(str(line["volume"]).startswith("vol-") for line in lines)
    assert all(isinstance(line["duration_ms"], float) for line in lines)


async def test_two_pods_share_one_staged_mount(cleanup: Path) -> None:
    kubelet = install(cleanup)
    async with flex_driver(cleanup):
        first = kubelet.mount(POD_A, "pv-shared")
        second = kubelet.mount(POD_B, "pv-shared", read_write="ro")
        staged = [p for p in mounts_under(cleanup) if p.startswith(str(kubelet.staging_root))]
        assert len(staged) == 1
        (first / "note").write_text("from a")
        assert (second / "note").read_text() == "from a"
        with pytest.raises(OSError, match="Read-only file system"):
            (second / "other").write_text("no")
        kubelet.unmount(first)
        assert (second / "note").read_text() == "from a"  # still staged for the other pod
        assert len(mounts_under(cleanup)) == 2
        kubelet.unmount(second)
        assert mounts_under(cleanup) == []


async def test_mount_repeated_on_a_mounted_dir_is_success(cleanup: Path) -> None:
    kubelet = install(cleanup)
    async with flex_driver(cleanup):
        target = kubelet.mount(POD_A, "pv-again")
        kubelet.mount(POD_A, "pv-again")
        assert mounts_under(cleanup).count(str(target)) == 1
        # The same dir for another volume is refused, and the first mount is untouched.
        assert "in use by volume" in kubelet.fails(
            "mount", str(target), kubelet_options("pv-other", POD_A)
        )
        assert mounts_under(cleanup).count(str(target)) == 1
        kubelet.unmount(target)
        assert mounts_under(cleanup) == []


async def test_unmount_of_a_plain_dir_or_a_foreign_mount(cleanup: Path) -> None:
    kubelet = install(cleanup)
    async with flex_driver(cleanup):
        plain = kubelet.pod_dir(POD_A, "never-mounted")
        (plain / "keep").write_text("x")
        kubelet.ok("unmount", str(plain))
        assert (plain / "keep").read_text() == "x"
        foreign = kubelet.pod_dir(POD_A, "foreign")
        _run("mount", "-t", "tmpfs", "tmpfs", str(foreign))
        try:
            assert "not an aiocsi volume" in kubelet.fails("unmount", str(foreign))
            assert str(foreign) in mounts_under(cleanup)
            # A mount that fails after the volume was made and staged undoes both.
            assert "foreign mount" in kubelet.fails(
                "mount", str(foreign), kubelet_options("foreign", POD_A)
            )
            assert mounts_under(cleanup) == [str(foreign)]
            assert _volumes(cleanup / "pool") == []
        finally:
            _run("umount", str(foreign))


def _has_capability(bit: int) -> bool:
    status = Path("/proc/self/status").read_text()
    [line] = [line for line in status.splitlines() if line.startswith("CapEff:")]
    return bool(int(line.split()[1], 16) >> bit & 1)


@pytest.mark.parametrize(
    ("fs_type", "size"), [("ext4", 64 * MiB), ("xfs", 300 * MiB), ("btrfs", 256 * MiB)]
)
async def test_expandfs_grows_a_mounted_filesystem(cleanup: Path, fs_type: str, size: int) -> None:
    kubelet = install(cleanup)
    bigger = size + 128 * MiB
    async with flex_driver(cleanup):
        target = kubelet.mount(POD_A, "pv-grow", size=str(size), fs_type=fs_type)
        (target / "data").write_bytes(b"x" * MiB)
        before = os.statvfs(target)
        options = kubelet_options("pv-grow", POD_A, fs_type=fs_type)
        expand = ("expandfs", options, "", str(target), str(bigger), str(size))
        if fs_type == "ext4" and not _has_capability(CAP_SYS_RESOURCE):
            # This machine drops CAP_SYS_RESOURCE even for root, and ext4 needs it to grow
            # while mounted: a clear Failure, and the next mount grows it unmounted.
            assert "CAP_SYS_RESOURCE" in kubelet.fails(*expand)
            assert os.statvfs(target).f_blocks == before.f_blocks
            kubelet.unmount(target)
            target = kubelet.mount(POD_A, "pv-grow", fs_type=fs_type)
        answer = kubelet.ok(*expand)
        assert int(str(answer.reply["volumeNewSize"])) >= bigger
        after = os.statvfs(target)
        grown = (after.f_blocks - before.f_blocks) * after.f_frsize
        assert grown > 100 * MiB, grown
        assert (target / "data").read_bytes() == b"x" * MiB
        kubelet.ok(*expand)  # a kubelet retry: nothing left to grow, still Success
        kubelet.unmount(target)
    assert mounts_under(cleanup) == []


async def test_pod_scoped_volume_is_deleted_at_unmount(cleanup: Path) -> None:
    kubelet = install(cleanup)
    async with flex_driver(cleanup):
        target = kubelet.mount(POD_A, "scratch", ephemeral="true", size="16Mi")
        (target / "tmp").write_text("gone soon")
        assert len(_volumes(cleanup / "pool")) == 1
        kubelet.unmount(target)
        assert _volumes(cleanup / "pool") == []
        assert mounts_under(cleanup) == []
        # The same pod volume mounted again is a new, empty volume.
        target = kubelet.mount(POD_A, "scratch", ephemeral="true")
        assert list(target.iterdir()) == [target / "lost+found"]
        kubelet.unmount(target)
        assert _volumes(cleanup / "pool") == []


async def test_every_unsupported_op_is_not_supported(cleanup: Path) -> None:
    kubelet = install(cleanup)
    async with flex_driver(cleanup):
        for call in UNSUPPORTED:
            answer = kubelet.run(*call)
            assert (answer.status, answer.code) == ("Not supported", 0), call


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "no operation"),
        (("mount",), "expected mount <mount dir> <options json>"),
        (("mount", "{pod}"), "expected mount <mount dir> <options json>"),
        (("mount", "{pod}", '{"kubernetes.io/fsType": '), "not valid JSON"),
        (("mount", "{pod}", "[1, 2]"), "must be a JSON object"),
        (("mount", "{pod}", "{options:size=lots}"), "option size"),
        (("mount", "{pod}", "{options:colour=blue}"), "unknown key 'colour'"),
        (("mount", "{pod}", "{options:kubernetes.io/fsType=zfs}"), "fsType 'zfs'"),
        (("mount", "{pod}", "{options:ephemeral=maybe}"), "option ephemeral"),
        (("mount", "relative/dir", "{options:}"), "must be an absolute path"),
        (("mount", "{root}/not-a-pod-dir", "{options:}"), "not a kubelet pod volume dir"),
        (("unmount",), "expected unmount <mount dir>"),
        (("expandfs", "{options:}", "", "{pod}", "lots", "1"), "newSize 'lots'"),
        (("expandfs", "{options:}"), "expected expandfs"),
        (("getvolumename",), "expected getvolumename"),
    ],
)
async def test_malformed_input_and_missing_args_fail_clearly(
    cleanup: Path, args: tuple[str, ...], expected: str
) -> None:
    kubelet = install(cleanup)
    pod = kubelet.pod_dir(POD_A, "pv-bad")

    def expand(arg: str) -> str:
        if arg.startswith("{options:"):
            key, _, value = arg.removeprefix("{options:").removesuffix("}").partition("=")
            return kubelet_options("pv-bad", POD_A, **({key: value} if key else {}))
        return arg.replace("{pod}", str(pod)).replace("{root}", str(cleanup))

    async with flex_driver(cleanup):
        assert expected in kubelet.fails(*[expand(a) for a in args])
        assert mounts_under(cleanup) == []
        assert _volumes(cleanup / "pool") == []


async def test_driver_stopped(cleanup: Path) -> None:
    kubelet = install(cleanup)
    target = kubelet.pod_dir(POD_A, "pv-x")
    message = kubelet.fails("mount", str(target), kubelet_options("pv-x", POD_A))
    assert "does not answer" in message
    assert str(kubelet.socket_path) in message
    assert kubelet.run("unmount", str(target)).code == 1
    kubelet.ok("init")
    assert kubelet.run("attach", "{}", "node").status == "Not supported"


async def test_getvolumename(cleanup: Path) -> None:
    kubelet = install(cleanup)
    async with flex_driver(cleanup):
        answer = kubelet.ok("getvolumename", kubelet_options("pv-named", POD_A))
        assert answer.reply["volumeName"] == "pv-named"
        answer = kubelet.ok("getvolumename", kubelet_options("pv-x", POD_A, volumeName="data-1"))
        assert answer.reply["volumeName"] == "data-1"


async def test_the_secret_appears_nowhere(cleanup: Path) -> None:
    kubelet = install(cleanup)
    outputs: list[bytes] = []
    async with flex_driver(cleanup) as server:
        target = kubelet.pod_dir(POD_A, "pv-secret")
        options = kubelet_options("pv-secret", POD_A)
        outputs.append(kubelet.ok("mount", str(target), options).output)
        outputs.append(kubelet.ok("mount", str(target), options).output)
        bad = kubelet_options("pv-secret", POD_A, colour=SECRET_B64)
        outputs.append(kubelet.run("mount", str(target), bad).output)
        outputs.append(kubelet.ok("getvolumename", options).output)
        outputs.append(kubelet.ok("unmount", str(target)).output)
        log = server.output()
    assert b"flexvolume" in log
    db = sqlite3.connect(cleanup / "pool" / "aiocsi.db")
    try:
        dump = "\n".join(db.iterdump()).encode()
    finally:
        db.close()
    assert b"pv-secret" in dump  # the state is there, just not the secret
    for where, text in [*((f"output {i}", o) for i, o in enumerate(outputs)), ("log", log)]:
        for value in (SECRET.encode(), SECRET_B64.encode()):
            assert value not in text, where
    assert SECRET_B64.encode() not in dump
    assert all(json.loads(o)["status"] for o in outputs)


async def test_a_stage_an_unmount_failed_to_release_goes_at_the_next_unmount(
    cleanup: Path,
) -> None:
    kubelet = install(cleanup)
    async with flex_driver(cleanup):
        target = kubelet.mount(POD_A, "pv-busy")
        [staged] = list(kubelet.staging_root.iterdir())
        with (staged / "held-open").open("w"):  # keeps the staged mount busy
            message = kubelet.fails("unmount", str(target))
            assert "busy" in message.lower(), message
        # Unpublished and its dir removed: the kubelet skips any retry of that unmount.
        assert not target.exists()
        assert mounts_under(cleanup) == [str(staged)]
        other = kubelet.mount(POD_B, "pv-other")
        assert str(staged) in mounts_under(cleanup)  # a mount never releases it
        kubelet.unmount(other)
        assert mounts_under(cleanup) == []
        assert not staged.exists()
