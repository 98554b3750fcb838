"""The host layer against the real thing: loop devices, mkfs, mounts and image copies.

Every test works under its own `workdir` and undoes what it made through `Scratch`, even
when it fails: mounts newest first, then loop devices newest first (read-only views before
the devices they sit on; each only while still backed by what it was given), then image
files.
"""

from __future__ import annotations

import errno
import filecmp
import mmap
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import anyio
import pytest

from aiocsi.errors import CommandFailed
from aiocsi.host import files, fs, loop, mount, superblock, syscalls, sysfs
from aiocsi.host.loop import LoopIndex
from aiocsi.host.process import run
from aiocsi.host.syscalls import SystemCallFailed
from aiocsi.threads import WorkerPool

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Sequence

pytestmark = pytest.mark.system

T = TypeVar("T")
MIB = 1024 * 1024
FS_TYPES = ["ext4", "xfs", "btrfs"]
# Small but realistic: the minimum, or 16 MiB for ext4 whose minimum leaves little room.
SMALL = {"ext4": 16 * MIB, "xfs": fs.MIN_FS_SIZE["xfs"], "btrfs": fs.MIN_FS_SIZE["btrfs"]}
DELETED = " (deleted)"
CAP_SYS_RESOURCE = 24
# The tests' own pool and loop index, as an engine has them.
W = WorkerPool(16)
LOOPS = LoopIndex(W)


def _has_capability(bit: int) -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


# Online ext4 growth (EXT4_IOC_RESIZE_FS) needs it; some machines drop it even for root.
CAN_GROW_EXT4_ONLINE = _has_capability(CAP_SYS_RESOURCE)


def _ext4_blocks(device: str) -> int:
    offset, length = superblock.LOCATION["ext4"]
    fd = os.open(device, os.O_RDONLY)
    try:
        return superblock.parse_ext4(os.pread(fd, length, offset)).blocks
    finally:
        os.close(fd)


class Scratch:
    """Creates images, loop devices and mounts for one test, and undoes exactly those."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._images: list[Path] = []
        self._devices: list[tuple[str, str]] = []  # (device, backing file it was given)
        self._mounts: list[Path] = []

    async def image(self, name: str, size: int) -> Path:
        path = self.root / name
        await files.create_sparse(W, path, size)
        self._images.append(path)
        return path

    async def attach(self, image: Path, *, read_only: bool = False) -> str:
        device = (await LOOPS.attach(image, read_only=read_only)).device
        self._devices.append((device, (sysfs.all_loop_backing_files())[device]))
        return device

    def adopt(self, device: str, image: Path) -> None:
        """Clean up `device`, attached by the test itself, at the end."""
        self._devices.append((device, str(image)))

    async def view(self, device: str) -> str:
        view = await LOOPS.attach_view(device)
        self._devices.append((view, device))
        return view

    def directory(self, name: str) -> Path:
        path = self.root / name
        path.mkdir()
        return path

    def new_file(self, name: str) -> Path:
        """A path for a file the code under test creates; removed at the end like an image."""
        path = self.root / name
        self._images.append(path)
        return path

    async def mount(
        self, source: str, name: str, *, fs_type: str, options: Sequence[str] = ()
    ) -> Path:
        target = self.directory(name)
        await self.mounted(target, mount.mount(W, source, target, fs_type=fs_type, options=options))
        return target

    async def mounted(self, target: Path, mounting: Awaitable[T]) -> T:
        # Recorded before awaiting: a mount that fails halfway may still leave one behind.
        self._mounts.append(target)
        return await mounting

    async def volume(self, fs_type: str, size: int) -> tuple[Path, str, Path]:
        """A formatted, mounted volume: (image, device, mount point)."""
        image = await self.image(f"{fs_type}.img", size)
        device = await self.attach(image)
        await fs.make_fs(W, device, fs_type)
        target = await self.mount(device, f"{fs_type}.mnt", fs_type=fs_type)
        return image, device, target

    async def _detach_if_ours(self, device: str, backing: str) -> None:
        # The device number may have been reused by someone else since this test let go.
        if (sysfs.all_loop_backing_files()).get(device) in {backing, backing + DELETED}:
            await LOOPS.detach(device)

    async def cleanup(self) -> None:
        errors: list[Exception] = []

        async def attempt(step: Awaitable[None]) -> None:
            # Keep undoing the rest; every failure is raised together at the end.
            try:
                await step
            except Exception as exc:  # noqa: BLE001 - collected and re-raised below
                errors.append(exc)

        for target in reversed(self._mounts):
            await attempt(mount.unmount(W, target))
        for device, backing in reversed(self._devices):
            await attempt(self._detach_if_ours(device, backing))
        for image in reversed(self._images):
            await attempt(files.remove_file(W, image))
        if errors:
            raise ExceptionGroup("cleanup failed", errors)


@pytest.fixture
async def scratch(workdir: Path) -> AsyncIterator[Scratch]:
    made = Scratch(workdir)
    try:
        yield made
    finally:
        await made.cleanup()


# --- process -----------------------------------------------------------------------------


async def test_command_failed_carries_argv_code_and_stderr(workdir: Path) -> None:
    missing = str(workdir / "missing")
    with pytest.raises(CommandFailed) as caught:
        await run(W, ["ls", missing])
    assert caught.value.argv == ("ls", missing)
    assert caught.value.returncode == 2
    assert "No such file or directory" in caught.value.stderr
    assert "ls exited with 2" in str(caught.value)


async def test_ok_codes_and_unchecked_results(workdir: Path) -> None:
    done = await run(W, ["ls", str(workdir / "missing")], ok_codes=(0, 2))
    assert done.returncode == 2
    done = await run(W, ["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")


async def test_missing_executable_is_127() -> None:
    with pytest.raises(CommandFailed) as caught:
        await run(W, ["aiocsi-no-such-tool", "--help"])
    assert caught.value.returncode == 127
    assert caught.value.stderr == "command not found: aiocsi-no-such-tool"
    done = await run(W, ["aiocsi-no-such-tool"], check=False)
    assert done.returncode == 127


async def test_commands_run_in_the_c_locale() -> None:
    done = await run(W, ["sh", "-c", 'echo "$LC_ALL"'])
    assert done.stdout == "C\n"


# --- loop devices ------------------------------------------------------------------------


async def test_attach_twice_gives_one_device(scratch: Scratch) -> None:
    image = await scratch.image("a.img", 16 * MIB)
    device = await scratch.attach(image)
    again = await LOOPS.attach(image)
    assert (again.device, again.new, again.blank) == (device, False, False)
    assert LOOPS.devices_for(image) == [device]
    assert (sysfs.all_loop_backing_files())[device] == str(image)
    assert sysfs.device_size_bytes(device) == 16 * MIB


async def test_attach_tells_a_blank_image_from_one_with_data(scratch: Scratch) -> None:
    blank = await scratch.image("blank.img", 16 * MIB)
    first = await LOOPS.attach(blank)
    scratch.adopt(first.device, blank)
    assert (first.new, first.blank) == (True, True)
    written = await scratch.image("written.img", 16 * MIB)
    with written.open("r+b") as handle:  # one block of data deep inside, holes elsewhere
        handle.seek(8 * MIB)
        handle.write(b"x" * 4096)
    second = await LOOPS.attach(written)
    scratch.adopt(second.device, written)
    assert (second.new, second.blank) == (True, False)


async def test_attach_read_only_and_refuse_a_second_mode(scratch: Scratch) -> None:
    image = await scratch.image("a.img", 16 * MIB)
    device = await scratch.attach(image, read_only=True)
    assert await anyio.Path(f"/sys/block/{Path(device).name}/ro").read_text() == "1\n"
    with pytest.raises(loop.LoopModeConflict, match="read-only"):
        await scratch.attach(image)


async def test_detach_twice(scratch: Scratch) -> None:
    image = await scratch.image("a.img", 16 * MIB)
    device = await scratch.attach(image)
    await LOOPS.detach(device)
    await LOOPS.detach(device)
    assert LOOPS.devices_for(image) == []


async def test_detach_is_done_when_another_image_takes_the_number_at_once(
    scratch: Scratch, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under churn the next stage's attach gets the freed number right after LOOP_CLR_FD
    # and keeps it while it stays staged: that device is detached from *this* image.
    image = await scratch.image("a.img", 16 * MIB)
    other = await scratch.image("b.img", 16 * MIB)
    device = await scratch.attach(image)
    scratch.adopt(device, other)
    detach_loop = syscalls.detach_loop

    def detach_then_taken(detached: str) -> None:
        detach_loop(detached)
        subprocess.run(["losetup", detached, str(other)], check=True, capture_output=True)

    monkeypatch.setattr(syscalls, "detach_loop", detach_then_taken)
    await LOOPS.detach(device)
    assert LOOPS.devices_for(image) == []
    assert LOOPS.devices_for(other) == [device], "the other image keeps its device"


async def test_detach_of_a_mounted_device_is_refused(scratch: Scratch) -> None:
    _, device, target = await scratch.volume("ext4", 16 * MIB)
    with pytest.raises(loop.LoopDeviceBusy):
        await LOOPS.detach(device)
    # The kernel still detaches it at the last close, which the unmount is.
    await mount.unmount(W, target)
    assert device not in sysfs.all_loop_backing_files()


async def test_a_deleted_image_is_found_until_a_new_one_takes_its_path(scratch: Scratch) -> None:
    old = await scratch.image("a.img", 16 * MIB)
    old_device = await scratch.attach(old)
    await files.remove_file(W, old)
    assert (sysfs.all_loop_backing_files())[old_device] == str(old) + DELETED
    # Still attached, so still found: it must be released like any other.
    assert LOOPS.devices_for(old) == [old_device]
    # ... but never handed out again.
    with pytest.raises(loop.ImageMissing, match=old_device):
        await scratch.attach(old)
    new = await scratch.image("a.img", 16 * MIB)
    assert LOOPS.devices_for(new) == [], "the old device holds another file"
    new_device = await scratch.attach(new)
    assert new_device != old_device
    assert LOOPS.devices_for(new) == [new_device]


async def test_attach_of_a_missing_image_is_refused(scratch: Scratch) -> None:
    with pytest.raises(loop.ImageMissing, match="does not exist"):
        await scratch.attach(scratch.root / "never.img")


async def test_refresh_size_follows_the_grown_image(scratch: Scratch) -> None:
    image = await scratch.image("a.img", 16 * MIB)
    device = await scratch.attach(image)
    await files.grow_file(W, image, 24 * MIB)
    assert sysfs.device_size_bytes(device) == 16 * MIB
    await LOOPS.refresh_size(device)
    assert sysfs.device_size_bytes(device) == 24 * MIB


def test_not_a_loop_device_is_refused() -> None:
    with pytest.raises(ValueError, match="not a loop device"):
        sysfs.device_size_bytes("/dev/vda")


async def test_view_reads_through_and_refuses_writes(scratch: Scratch) -> None:
    image = await scratch.image("a.img", 16 * MIB)
    device = await scratch.attach(image)
    view = await scratch.view(device)
    # Not synced: the view holds the device open, so this stays in the device's cache.
    _write_at(Path(device), {MIB: b"written before"})
    assert sysfs.is_read_only(view)
    assert sysfs.backing_file(view) == device
    assert sysfs.views_on(device, sysfs.all_loop_backing_files()) == [view]
    assert _read_at(Path(view), MIB, 14) == b"written before"
    with pytest.raises(OSError, match="not permitted") as caught:
        _write_at(Path(view), {0: b"x"})
    assert caught.value.errno == errno.EPERM
    # A view keeps a page cache of its own: a reader that stays open reads with O_DIRECT.
    _write_at(Path(device), {MIB: b"written after!"})
    assert _read_direct(view, MIB)[:14] == b"written after!"


async def test_view_follows_a_grown_device(scratch: Scratch) -> None:
    image = await scratch.image("a.img", 16 * MIB)
    device = await scratch.attach(image)
    view = await scratch.view(device)
    await files.grow_file(W, image, 24 * MIB)
    await LOOPS.refresh_size(device)
    await LOOPS.refresh_size(view)
    assert sysfs.device_size_bytes(view) == 24 * MIB


async def test_a_device_holding_a_view_detaches_after_it(scratch: Scratch) -> None:
    image = await scratch.image("a.img", 16 * MIB)
    device = await scratch.attach(image)
    view = await scratch.view(device)
    with pytest.raises(loop.LoopDeviceBusy):
        await LOOPS.detach(device)  # the view holds it open; it goes with the view
    await LOOPS.detach(view)
    backing_files = sysfs.all_loop_backing_files()
    assert device not in backing_files
    assert view not in backing_files


async def test_bound_loop_devices_are_found_by_number(scratch: Scratch) -> None:
    device = await scratch.attach(await scratch.image("a.img", 16 * MIB))
    view = await scratch.view(device)
    targets = {name: scratch.root / name for name in ("rw-node", "ro-node")}
    for target in targets.values():
        target.touch()
    await scratch.mounted(targets["rw-node"], mount.bind_mount(W, device, targets["rw-node"]))
    await scratch.mounted(
        targets["ro-node"], mount.bind_mount(W, view, targets["ro-node"], read_only=True)
    )
    bound = sysfs.bound_loop_devices(mount.read_mounts())
    assert {point: dev for point, dev in bound.items() if point.startswith(str(scratch.root))} == {
        str(targets["rw-node"]): device,
        str(targets["ro-node"]): view,
    }
    assert sysfs.loop_device_of(targets["ro-node"]) == view
    assert sysfs.loop_device_of(scratch.root) is None


# --- filesystems -------------------------------------------------------------------------


@pytest.mark.parametrize("fs_type", FS_TYPES)
async def test_make_fs_then_probe(scratch: Scratch, fs_type: str) -> None:
    device = await scratch.attach(await scratch.image("a.img", SMALL[fs_type]))
    assert await fs.probe_fs_type(W, device) is None
    await fs.make_fs(W, device, fs_type)
    assert await fs.probe_fs_type(W, device) == fs_type


@pytest.mark.parametrize("fs_type", ["xfs", "btrfs"])
async def test_make_fs_refuses_to_overwrite(scratch: Scratch, fs_type: str) -> None:
    device = await scratch.attach(await scratch.image("a.img", SMALL[fs_type]))
    await fs.make_fs(W, device, "ext4")
    with pytest.raises(CommandFailed):
        await fs.make_fs(W, device, fs_type)
    assert await fs.probe_fs_type(W, device) == "ext4"


async def test_unsupported_fs_type() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        await fs.make_fs(W, "/dev/null", "vfat")
    with pytest.raises(ValueError, match="unsupported"):
        await fs.grow_fs(W, "/dev/null", Path("/"), "vfat")
    with pytest.raises(ValueError, match="unsupported"):
        await fs.can_grow(W, "/dev/null", "vfat")


@pytest.mark.parametrize("fs_type", FS_TYPES)
async def test_grow_online(scratch: Scratch, fs_type: str) -> None:
    image, device, target = await scratch.volume(fs_type, SMALL[fs_type])
    (target / "data").write_bytes(b"kept")
    before = await fs.fs_stats(W, target)
    await files.grow_file(W, image, SMALL[fs_type] + 64 * MIB)
    await LOOPS.refresh_size(device)
    assert await fs.can_grow(W, device, fs_type)
    if fs_type == "ext4" and not CAN_GROW_EXT4_ONLINE:
        # The refusal is told apart from other failures; unmounted, the grow works.
        with pytest.raises(fs.OnlineGrowRefused, match="Permission denied"):
            await fs.grow_fs(W, device, target, fs_type)
        assert (await fs.fs_stats(W, target)).total_bytes == before.total_bytes
        await mount.unmount(W, target)
        await fs.grow_offline(W, device, fs_type)
        await scratch.mounted(target, mount.mount(W, device, target, fs_type=fs_type))
    else:
        await fs.grow_fs(W, device, target, fs_type)
    after = await fs.fs_stats(W, target)
    assert after.total_bytes > before.total_bytes + 48 * MIB
    assert after.available_bytes > before.available_bytes
    assert (target / "data").read_bytes() == b"kept"
    # Unmounted, so that xfs has written back the superblock it grew in its log.
    await mount.unmount(W, target)
    assert not await fs.can_grow(W, device, fs_type)


async def test_grow_ext4_offline_after_it_was_mounted(scratch: Scratch) -> None:
    # resize2fs alone refuses a filesystem mounted since its last check: grow_offline
    # checks it first.
    image, device, target = await scratch.volume("ext4", 16 * MIB)
    (target / "data").write_bytes(b"kept")
    await mount.unmount(W, target)
    await files.grow_file(W, image, 48 * MIB)
    await LOOPS.refresh_size(device)
    await fs.grow_offline(W, device, "ext4")
    await scratch.mounted(target, mount.mount(W, device, target, fs_type="ext4"))
    assert (await fs.fs_stats(W, target)).total_bytes > 40 * MIB
    assert (target / "data").read_bytes() == b"kept"


@pytest.mark.parametrize("fs_type", ["xfs", "btrfs"])
async def test_grow_offline_is_refused_for_filesystems_that_grow_mounted(fs_type: str) -> None:
    with pytest.raises(ValueError, match="only be grown while mounted"):
        await fs.grow_offline(W, "/dev/null", fs_type)


@pytest.mark.parametrize("fs_type", FS_TYPES)
async def test_a_fresh_filesystem_cannot_grow(scratch: Scratch, fs_type: str) -> None:
    device = await scratch.attach(await scratch.image("a.img", SMALL[fs_type]))
    await fs.make_fs(W, device, fs_type)
    assert not await fs.can_grow(W, device, fs_type)


# (formatted size, grown size): mke2fs leaves a last block group too small for its own
# metadata unused, and resize2fs does the same, so such a tail is no room to grow into.
EXT4_TAILS = [
    (1025 * MIB, 1025 * MIB),  # mke2fs left 1 MiB past the last 128 MiB group unused
    (1024 * MIB, 1026 * MIB),  # 2 MiB into a new group: too small, resize2fs drops it
    (1024 * MIB, 1027 * MIB),  # 3 MiB: enough for a group of its own
    (130 * MIB, 131 * MIB),  # 1 KiB blocks, 8 MiB groups: a partial last group grows
    (16 * MIB, 16 * MIB + 4096),  # one page more
]


@pytest.mark.parametrize(("formatted", "grown"), EXT4_TAILS)
async def test_ext4_can_grow_agrees_with_resize2fs(
    scratch: Scratch, formatted: int, grown: int
) -> None:
    image = await scratch.image("a.img", formatted)
    device = await scratch.attach(image)
    await fs.make_fs(W, device, "ext4")
    await files.grow_file(W, image, grown)
    await LOOPS.refresh_size(device)
    predicted = await fs.can_grow(W, device, "ext4")
    before = _ext4_blocks(device)
    await fs.grow_offline(W, device, "ext4")
    assert predicted == (_ext4_blocks(device) > before)
    assert not await fs.can_grow(W, device, "ext4")


@pytest.mark.parametrize("fs_type", FS_TYPES)
async def test_fs_stats(scratch: Scratch, fs_type: str) -> None:
    _, _, target = await scratch.volume(fs_type, SMALL[fs_type])
    stats = await fs.fs_stats(W, target)
    assert 0 < stats.available_bytes <= stats.total_bytes <= SMALL[fs_type]
    assert stats.used_bytes + stats.available_bytes <= stats.total_bytes
    assert stats.used_inodes == stats.total_inodes - stats.free_inodes
    if fs_type == "btrfs":
        assert stats.total_inodes == 0
    else:
        assert stats.free_inodes > 0


@pytest.mark.parametrize("fs_type", FS_TYPES)
async def test_min_size_formats(scratch: Scratch, fs_type: str) -> None:
    device = await scratch.attach(await scratch.image("a.img", fs.MIN_FS_SIZE[fs_type]))
    await fs.make_fs(W, device, fs_type)
    assert await fs.probe_fs_type(W, device) == fs_type


# --- mounts ------------------------------------------------------------------------------


async def test_mount_and_unmount_are_seen_and_idempotent(scratch: Scratch) -> None:
    _, device, target = await scratch.volume("ext4", 16 * MIB)
    (top,) = await mount.mounts_at(W, target)
    assert (top.source, top.fs_type, top.read_only) == (device, "ext4", False)
    (target / "file").write_text("data")
    await mount.unmount(W, target)
    assert not await mount.is_mount_point(W, target)
    assert not (target / "file").exists()
    await mount.unmount(W, target)
    await mount.unmount(W, target / "no" / "such" / "path")


async def test_a_target_made_for_a_mount_goes_again_when_the_mount_fails(
    scratch: Scratch,
) -> None:
    _, device, mounted = await scratch.volume("ext4", 16 * MIB)
    await mount.unmount(W, mounted)
    target = scratch.root / "made" / "here"
    with pytest.raises(SystemCallFailed, match="no valid xfs filesystem"):
        await mount.mount(W, device, target, fs_type="xfs", make_target="dir")
    assert not target.exists()
    made = await scratch.mounted(
        target, mount.mount(W, device, target, fs_type="ext4", make_target="dir")
    )
    assert made is True
    assert [m.source for m in await mount.mounts_at(W, target)] == [device]
    node = scratch.new_file("node")
    assert await scratch.mounted(node, mount.bind_mount(W, device, node, make_target="file"))
    assert node.stat().st_size == 0
    assert [m.fs_type for m in await mount.mounts_at(W, node)] == ["devtmpfs"]


async def test_mount_options_are_applied(scratch: Scratch) -> None:
    _, device, target = await scratch.volume("ext4", 16 * MIB)
    await mount.unmount(W, target)
    await scratch.mounted(
        target, mount.mount(W, device, target, fs_type="ext4", options=["ro", "noatime"])
    )
    (top,) = await mount.mounts_at(W, target)
    assert top.read_only
    assert "noatime" in top.options


async def test_busy_mount_is_reported_not_hidden(scratch: Scratch) -> None:
    target = await scratch.mount("tmpfs", "busy", fs_type="tmpfs", options=["size=1m"])
    async with await anyio.open_file(target / "open", "w"):
        with pytest.raises(SystemCallFailed, match="busy") as caught:
            await mount.unmount(W, target)
    assert caught.value.errno == errno.EBUSY
    assert await mount.is_mount_point(W, target)


async def test_mounts_at_a_path_with_a_space(scratch: Scratch) -> None:
    target = await scratch.mount("tmpfs", "with space", fs_type="tmpfs", options=["size=1m"])
    (top,) = await mount.mounts_at(W, target)
    assert top.mount_point == str(target)
    assert top.fs_type == "tmpfs"


async def test_stacked_mounts_come_off_newest_first(scratch: Scratch) -> None:
    target = await scratch.mount("tmpfs", "stack", fs_type="tmpfs", options=["size=1m"])
    await scratch.mounted(target, mount.mount(W, "tmpfs", target, fs_type="tmpfs"))
    first, second = await mount.mounts_at(W, target)
    assert second.parent_id == first.mount_id
    await mount.unmount(W, target)
    assert [m.mount_id for m in await mount.mounts_at(W, target)] == [first.mount_id]


async def test_read_only_bind_refuses_writes(scratch: Scratch) -> None:
    source = scratch.directory("source")
    (source / "existing").write_text("data")
    target = scratch.directory("ro")
    await scratch.mounted(target, mount.bind_mount(W, source, target, read_only=True))
    (top,) = await mount.mounts_at(W, target)
    assert top.read_only
    assert top.root == str(source)
    assert (target / "existing").read_text() == "data"
    with pytest.raises(OSError, match="Read-only") as caught:
        (target / "new").write_text("data")
    assert caught.value.errno == errno.EROFS


async def test_read_write_bind_passes_writes_through(scratch: Scratch) -> None:
    source = scratch.directory("source")
    target = scratch.directory("rw")
    await scratch.mounted(target, mount.bind_mount(W, source, target))
    (top,) = await mount.mounts_at(W, target)
    assert not top.read_only
    (target / "new").write_text("data")
    assert (source / "new").read_text() == "data"


async def test_bind_mount_of_a_file(scratch: Scratch) -> None:
    source = await scratch.image("block.img", MIB)
    target = scratch.root / "block"
    target.touch()
    await scratch.mounted(target, mount.bind_mount(W, source, target, read_only=True))
    assert await mount.is_mount_point(W, target)
    with pytest.raises(OSError, match="Read-only"):
        target.write_bytes(b"x")


# --- image copies ------------------------------------------------------------------------

WRITES = {0: b"head", 10 * MIB + 123: b"middle", 64 * MIB - 4: b"tail"}


def _write_at(path: Path, writes: dict[int, bytes]) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset, data in writes.items():
            os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _read_at(path: Path, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def _read_direct(device: str, offset: int) -> bytes:
    """One page at `offset` (page aligned), past any page cache."""
    buffer = mmap.mmap(-1, mmap.PAGESIZE)  # O_DIRECT wants an aligned buffer
    fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
    try:
        os.preadv(fd, [buffer], offset)
        return bytes(buffer)
    finally:
        os.close(fd)
        buffer.close()


async def _sparse_source(scratch: Scratch) -> Path:
    src = await scratch.image("src.img", 64 * MIB)
    _write_at(src, WRITES)
    return src


async def test_copy_image_keeps_holes_and_data(scratch: Scratch) -> None:
    src = await _sparse_source(scratch)
    dst = scratch.new_file("dst.img")
    # /tmp is ext4 here; where the test directory can reflink, the copy says so.
    assert await files.copy_image(W, src, dst) in {"sparse-copy", "reflink"}
    assert files.file_size(dst) == 64 * MIB
    assert files.allocated_bytes(dst) < 2 * MIB
    for offset, data in WRITES.items():
        assert _read_at(dst, offset, len(data)) == data
    assert await anyio.to_thread.run_sync(lambda: filecmp.cmp(src, dst, shallow=False))


async def test_copy_image_extends_to_size(scratch: Scratch) -> None:
    src = await _sparse_source(scratch)
    dst = scratch.new_file("dst.img")
    await files.copy_image(W, src, dst, size=96 * MIB)
    assert files.file_size(dst) == 96 * MIB
    assert _read_at(dst, 64 * MIB - 4, 4) == b"tail"
    assert _read_at(dst, 64 * MIB, MIB) == bytes(MIB)


async def test_copy_image_reflinks_on_btrfs(scratch: Scratch) -> None:
    _, _, target = await scratch.volume("btrfs", SMALL["btrfs"])
    src = target / "src.img"
    await files.create_sparse(W, src, 8 * MIB)
    _write_at(src, {MIB: b"shared extent"})
    assert await files.copy_image(W, src, target / "dst.img") == "reflink"
    assert _read_at(target / "dst.img", MIB, 13) == b"shared extent"


async def test_failed_copy_leaves_no_partial_file(scratch: Scratch) -> None:
    src = await scratch.image("src.img", 8 * MIB)
    _write_at(src, {0: os.urandom(4 * MIB)})
    target = await scratch.mount("tmpfs", "small", fs_type="tmpfs", options=["size=1m"])
    # Across filesystems this also takes the read/write fallback of copy_file_range.
    with pytest.raises(OSError, match="No space left") as caught:
        await files.copy_image(W, src, target / "dst.img")
    assert caught.value.errno == errno.ENOSPC
    assert list(target.iterdir()) == []
