"""Mounts: /proc/self/mountinfo is the source of truth; mount(2) and umount2(2) act.

Never lazy or forced unmounts: a busy mount is reported, not hidden.
"""

from __future__ import annotations

import errno
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from aiocsi.host import files, syscalls

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from aiocsi.threads import WorkerPool

_MOUNTINFO = "/proc/self/mountinfo"
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
_SEPARATOR = "-"
_LEADING_FIELDS = 6  # mount id .. per-mount options, before the optional fields
_SURROGATE_BASE = 0xDC00
_ASCII_LIMIT = 0x80
_MOUNT_POINT_FIELD = 4
_ESCAPES = {char: f"\\{ord(char):03o}" for char in " \t\n\\"}


@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    parent_id: int
    major_minor: str
    root: str
    mount_point: str
    options: frozenset[str]
    fs_type: str
    source: str
    super_options: frozenset[str]

    @property
    def read_only(self) -> bool:
        # The per-mount flag: a read-only bind of a read-write filesystem is "ro" here only.
        return "ro" in self.options


def _unescape_byte(match: re.Match[str]) -> str:
    value = int(match.group(1), 8)
    # Non-ASCII bytes map the way os.fsdecode maps them, so the result round-trips to bytes.
    return chr(value) if value < _ASCII_LIMIT else chr(_SURROGATE_BASE + value)


def _unescape(field: str) -> str:
    return _OCTAL_ESCAPE.sub(_unescape_byte, field)


def _options(field: str) -> frozenset[str]:
    return frozenset(_unescape(field).split(","))


def _parse_line(line: str) -> MountEntry:
    fields = line.split(" ")
    # Optional fields ("shared:1 master:2") vary in number; the separator ends them.
    separator = fields.index(_SEPARATOR, _LEADING_FIELDS)
    mount_id, parent_id, major_minor, root, mount_point, options = fields[:_LEADING_FIELDS]
    fs_type, source, super_options = fields[separator + 1 : separator + 4]
    return MountEntry(
        mount_id=int(mount_id),
        parent_id=int(parent_id),
        major_minor=major_minor,
        root=_unescape(root),
        mount_point=_unescape(mount_point),
        options=_options(options),
        fs_type=fs_type,
        source=_unescape(source),
        super_options=_options(super_options),
    )


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse proc(5) mountinfo text; paths come back unescaped, in the file's order."""
    # Only "\n" ends a line: str.splitlines() would also split on "\r" and other characters
    # that the kernel leaves unescaped in paths.
    return [_parse_line(line) for line in text.split("\n") if line]


def _mountinfo_text() -> str:
    return os.fsdecode(files.read_proc(_MOUNTINFO))


def mounts_where(wanted: Callable[[str], bool]) -> list[MountEntry]:
    """The mounts whose mountinfo line (as written, escaped) `wanted` accepts, parsed.

    A cheap text test first: parsing a line costs far more, and a caller that needs a few
    mounts of a table of dozens should not parse them all. On the event loop, like
    `mounts_at_point`.
    """
    return [_parse_line(line) for line in _mountinfo_text().split("\n") if line and wanted(line)]


def read_mounts() -> list[MountEntry]:
    """Every mount. On the event loop: procfs is kernel memory, a read never waits for a
    disk."""
    return parse_mountinfo(_mountinfo_text())


def _escape(path: str) -> str:
    """A path the way mountinfo writes it: space, tab, newline and backslash in octal."""
    return "".join(_ESCAPES.get(char, char) for char in path)


def mounts_at_point(point: Path) -> list[MountEntry]:
    """The mounts stacked at `point`, oldest first; `point` must be canonical (no symlinks,
    as `canonical` returns it): mountinfo shows resolved paths.

    Runs on the event loop: procfs is kernel memory, and only the lines of mounts at
    `point` are parsed.
    """
    wanted = _escape(os.fsdecode(point))
    needle = f" {wanted} "  # a cheap test first; then the mount point field must match

    def at_point(line: str) -> bool:
        return (
            needle in line and line.split(" ", _MOUNT_POINT_FIELD + 1)[_MOUNT_POINT_FIELD] == wanted
        )

    return mounts_where(at_point)


async def canonical(workers: WorkerPool, path: Path) -> Path:
    """`path` with every symlink resolved (walks the filesystem: in a worker thread)."""
    return await workers.run_sync(files.canonical_sync, path)


async def mounts_at(workers: WorkerPool, path: Path) -> list[MountEntry]:
    """The mounts stacked at `path`, oldest first: the last one is the visible one."""
    # mountinfo shows canonical paths; mount(2) canonicalises its target the same way.
    return mounts_at_point(await canonical(workers, path))


async def is_mount_point(workers: WorkerPool, path: Path) -> bool:
    return bool(await mounts_at(workers, path))


# What a mount call may create at its target first: a directory, an empty file, nothing.
MakeTarget = Literal["dir", "file"] | None


def _made_then(target: Path, make: MakeTarget, act: Callable[[], None]) -> bool:
    """Create `target` as `make` says, then `act`; True when the target was created here.

    One worker-thread call for both. A target made here is removed again if `act` fails.
    """
    created = False
    if make == "dir":
        created = files.ensure_dir_sync(target)
    elif make == "file":
        created = files.ensure_file_sync(target)
    try:
        act()
    except BaseException:
        if created:
            files.remove_empty_sync(target)
        raise
    return created


async def mount(
    workers: WorkerPool,
    source: str,
    target: Path,
    *,
    fs_type: str,
    options: Sequence[str] = (),
    make_target: MakeTarget = None,
) -> bool:
    """Mount `source` on `target`; a second call stacks a second mount (look first).

    `options` are mount(8)-style: the generic ones become mount flags, the rest go to the
    filesystem. Returns whether `make_target` created the target.
    """
    flags, data = syscalls.mount_flags(options)
    act = functools.partial(syscalls.mount, source, str(target), fs_type, flags, data)
    return await workers.run_sync(_made_then, target, make_target, act)


def _bind_sync(source: str, target: str, *, read_only: bool) -> None:
    syscalls.mount(source, target, None, syscalls.MS_BIND)
    if not read_only:
        return
    # A bind takes the flags of its source; read-only takes a remount of the new mount.
    try:
        syscalls.remount_bind_read_only(target)
    except BaseException:
        syscalls.unmount(target)
        raise


async def bind_mount(
    workers: WorkerPool,
    source: Path | str,
    target: Path,
    *,
    read_only: bool = False,
    make_target: MakeTarget = None,
) -> bool:
    """Bind `source` on `target`; with `read_only` the new mount refuses writes.

    A bind whose read-only remount fails is undone: a read-write mount is never left where
    a read-only one was asked for. Returns whether `make_target` created the target.
    """
    act = functools.partial(_bind_sync, str(source), str(target), read_only=read_only)
    return await workers.run_sync(_made_then, target, make_target, act)


def unmount_sync(target: str | Path) -> None:
    """`unmount` for a caller already in a worker thread."""
    try:
        syscalls.unmount(str(target))
    except syscalls.SystemCallFailed as exc:
        # Not a mount point (EINVAL) or no such path: someone unmounted it first.
        if exc.errno not in (errno.EINVAL, errno.ENOENT, errno.ENOTDIR):
            raise


async def unmount(workers: WorkerPool, target: Path) -> None:
    """Unmount the top mount at `target`; nothing mounted there (or no such path) is fine."""
    await workers.run_sync(unmount_sync, target)
