"""Mounts: /proc/self/mountinfo is the source of truth; mount(8) and umount(8) act.

Never lazy or forced unmounts, never `-a`: a busy mount is reported, not hidden.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from aiocsi.errors import CommandFailed
from aiocsi.host.process import run

if TYPE_CHECKING:
    from collections.abc import Sequence

_MOUNTINFO = Path("/proc/self/mountinfo")
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
_SEPARATOR = "-"
_LEADING_FIELDS = 6  # mount id .. per-mount options, before the optional fields
_SURROGATE_BASE = 0xDC00
_ASCII_LIMIT = 0x80


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


def _read_mounts_sync() -> list[MountEntry]:
    return parse_mountinfo(os.fsdecode(_MOUNTINFO.read_bytes()))


async def read_mounts() -> list[MountEntry]:
    # procfs is kernel memory: reading it takes microseconds and never waits for a disk.
    return _read_mounts_sync()


def _mounts_at_sync(path: Path) -> list[MountEntry]:
    # mountinfo shows canonical paths; mount(8) canonicalises its target the same way.
    point = str(path.resolve())
    return [entry for entry in _read_mounts_sync() if entry.mount_point == point]


async def mounts_at(path: Path) -> list[MountEntry]:
    """The mounts stacked at `path`, oldest first: the last one is the visible one."""
    return await anyio.to_thread.run_sync(_mounts_at_sync, path)


async def is_mount_point(path: Path) -> bool:
    return bool(await mounts_at(path))


async def mount(
    source: str,
    target: Path,
    *,
    fs_type: str | None = None,
    options: Sequence[str] = (),
) -> None:
    """Mount `source` on `target`; a second call stacks a second mount (look first)."""
    argv = ["mount"]
    if fs_type is not None:
        argv += ["-t", fs_type]
    if options:
        argv += ["-o", ",".join(options)]
    await run([*argv, source, str(target)])


async def bind_mount(source: Path | str, target: Path, *, read_only: bool = False) -> None:
    """Bind `source` on `target`; with `read_only` the new mount refuses writes.

    util-linux 2.38 does "bind,ro" as a bind followed by a read-only remount. If the remount
    fails, mount(8) fails but leaves the read-write bind behind, so that one is undone.
    """
    if not read_only:
        await mount(str(source), target, options=["bind"])
        return
    before = len(await mounts_at(target))
    try:
        await mount(str(source), target, options=["bind", "ro"])
    except CommandFailed:
        after = await mounts_at(target)
        if len(after) > before and not after[-1].read_only:
            await unmount(target)
        raise


def _not_mounted(stderr: str) -> bool:
    return "not mounted" in stderr or "no mount point specified" in stderr


async def unmount(target: Path) -> None:
    """Unmount the top mount at `target`; nothing mounted there (or no such path) is fine."""
    if not await is_mount_point(target):
        return
    done = await run(["umount", str(target)], check=False)
    # Someone may have unmounted it between the look and the act.
    if done.returncode != 0 and not _not_mounted(done.stderr):
        raise CommandFailed(done.argv, done.returncode, done.stderr)
