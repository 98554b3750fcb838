"""What the kernel knows about write failures on a loop device and its filesystem.

Three sources, because none covers every case:

- ext4 counts the errors it records (`/sys/fs/ext4/<dev>/errors_count`, kept in the
  superblock across mounts), but a lost data write is only a warning and an emergency
  message to ext4, not a recorded error: measured on Linux 6.18, a write into a volume
  whose pool was full left `errors_count` at 0.
- btrfs counts write, read, flush, corruption and generation errors per device
  (`/sys/fs/btrfs/<fsid>/devinfo/<devid>/error_stats`, since Linux 5.14).
- xfs has no error counter in sysfs; it logs its errors and its shutdown.

The kernel log (`/dev/kmsg`) is the one source for all three and for the loop device
itself: the block layer logs every failed request ("critical space allocation error, dev
loop2, sector ...", rate-limited), and the filesystems their own errors, all at level err
or worse. Errors are kept per loop device from its latest attachment on, so that a reused
device number does not inherit another image's errors: the engine calls `forget` when it
attaches a device, and the kernel's "loopN: detected capacity change from 0 to ..." (not
logged when a device is attached again at its previous size) starts a record afresh too.
Only what is logged while this process runs counts (the log is read from its end on
start): the record lives in this process's memory.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

_KMSG = "/dev/kmsg"
_SYS_EXT4 = Path("/sys/fs/ext4")
_SYS_BTRFS = Path("/sys/fs/btrfs")
# A kmsg record is at most 1 KiB of text plus its dictionary; a short read truncates it.
_RECORD_MAX = 8192
# syslog levels: err and worse; facility 0 is the kernel (userspace writes carry another).
_LOG_ERR = 3
_LOOP_NAME = re.compile(r"\b(loop\d+)\b")
# The block layer's words for BLK_STS_NOSPC: the loop device's backing file could not grow.
_NO_SPACE_STATUS = "critical space allocation error"
# BLK_STS_NOTSUPP: a request the device does not do (mkfs's WRITE_ZEROES on a loop device
# that refuses discards); the caller falls back, nothing is lost.
_NOT_SUPPORTED_STATUS = "operation not supported error"
_ATTACHED = re.compile(r"^(loop\d+): detected capacity change from 0 to \d+")


@dataclass(frozen=True)
class KernelRecord:
    level: int
    facility: int
    text: str


def parse_record(record: bytes) -> KernelRecord | None:
    """One /dev/kmsg record ("<prio>,<seq>,<usec>,<flags>;<text>\\n[ KEY=value\\n]...")."""
    header, sep, body = record.decode(errors="replace").partition(";")
    prio, _, _ = header.partition(",")
    if not sep or not prio.isdigit():
        return None
    value = int(prio)
    return KernelRecord(level=value & 7, facility=value >> 3, text=body.split("\n", 1)[0])


@dataclass(frozen=True)
class DeviceErrors:
    count: int
    last: str
    no_space: bool  # the block layer failed a request of it for space (BLK_STS_NOSPC)


class KernelLog:
    """Errors the kernel logged per loop device, read from /dev/kmsg without blocking.

    `drain` reads what is new since the last call (the whole ring buffer the first time)
    and may be called from any worker thread.
    """

    def __init__(self, path: str = _KMSG) -> None:
        self._path = path
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._errors: dict[str, DeviceErrors] = {}
        self.unavailable: str | None = None

    def _open(self) -> int | None:
        if self._fd is None and self.unavailable is None:
            try:
                self._fd = os.open(self._path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                # Older records may name devices since attached to other images.
                os.lseek(self._fd, 0, os.SEEK_END)
            except OSError as exc:
                self.unavailable = f"{self._path}: {exc.strerror}"
        return self._fd

    def drain(self) -> None:
        with self._lock:
            self._drain_locked()

    def forget(self, device: str) -> None:
        """`device` was just attached: what was logged for it before is another image's."""
        with self._lock:
            self._drain_locked()
            self._errors.pop(device.removeprefix("/dev/"), None)

    def _drain_locked(self) -> None:
        fd = self._open()
        if fd is None:
            return
        while True:
            try:
                record = os.read(fd, _RECORD_MAX)
            except BlockingIOError:
                return
            except BrokenPipeError:  # records overwritten before we read them
                continue
            if not record:
                return
            self.take(record)

    def take(self, record: bytes) -> None:
        """Account one record (the caller holds the lock, or owns the log)."""
        parsed = parse_record(record)
        if parsed is None or parsed.facility != 0:
            return
        if (attached := _ATTACHED.match(parsed.text)) is not None:
            self._errors.pop(attached.group(1), None)
            return
        if parsed.level > _LOG_ERR or _NOT_SUPPORTED_STATUS in parsed.text:
            return
        for name in set(_LOOP_NAME.findall(parsed.text)):
            seen = self._errors.get(name)
            no_space = _NO_SPACE_STATUS in parsed.text or (seen is not None and seen.no_space)
            self._errors[name] = DeviceErrors(
                (seen.count if seen else 0) + 1, parsed.text, no_space
            )

    def ran_out_of_space(self, device: str) -> bool:
        """Whether a request of `device` failed for space since it was attached (drains)."""
        self.drain()
        found = self.errors_of(device)
        return found is not None and found.no_space

    def errors_of(self, device: str) -> DeviceErrors | None:
        with self._lock:
            return self._errors.get(device.removeprefix("/dev/"))

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _ext4_problem(name: str) -> str | None:
    base = _SYS_EXT4 / name
    count = _read_int(base / "errors_count")
    if not count:
        return None
    with contextlib.suppress(OSError):
        func = (base / "last_error_func").read_text().strip()
        code = _read_int(base / "last_error_errcode")
        return f"its ext4 filesystem recorded {count} errors (the last in {func}, error {code})"
    return f"its ext4 filesystem recorded {count} errors"


def _btrfs_problem(name: str) -> str | None:
    try:
        filesystems = list(_SYS_BTRFS.iterdir())
    except OSError:
        return None
    for fs_dir in filesystems:
        if not (fs_dir / "devices" / name).exists():
            continue
        counts: dict[str, int] = {}
        for stats in fs_dir.glob("devinfo/*/error_stats"):
            with contextlib.suppress(OSError):
                for line in stats.read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if value.strip().isdigit() and int(value):
                        counts[key] = counts.get(key, 0) + int(value)
        if counts:
            listed = ", ".join(f"{key} {value}" for key, value in sorted(counts.items()))
            return f"its btrfs filesystem counted {listed}"
    return None


def device_problems(device: str, kernel_log: KernelLog) -> list[str]:
    """Why writes through `device` ("/dev/loopN") may have been lost; empty when none.

    Blocking (sysfs reads, a kmsg drain): call from a worker thread.
    """
    name = device.removeprefix("/dev/")
    problems = [p for p in (_ext4_problem(name), _btrfs_problem(name)) if p is not None]
    kernel_log.drain()
    if (logged := kernel_log.errors_of(name)) is not None:
        problems.append(
            f"the kernel logged {logged.count} errors for {device} since it was attached "
            f"(the last: {logged.last!r})"
        )
    return problems
