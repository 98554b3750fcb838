"""The kernel interfaces aiocsi calls directly: mount(2), umount2(2) and the loop ioctls.

One system call each instead of a mount(8), umount(8) or losetup(8) process (see
docs/benchmarks.md for what that saves). They block (a mount reads the journal, an
unmount flushes), so callers run them in worker threads; ctypes and fcntl release the GIL
while the kernel works.

Linux >= 5.8 (LOOP_CONFIGURE). Every function raises `SystemCallFailed`, which names the
call, the object and the errno, so that a message says what failed and why.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType

from aiocsi.errors import HostFailure

# <linux/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
_ATIME_FLAGS = MS_NOATIME | MS_RELATIME | MS_STRICTATIME

# <linux/loop.h>
LOOP_CLR_FD = 0x4C01
LOOP_SET_CAPACITY = 0x4C07
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_READ_ONLY = 1
_LO_NAME_SIZE = 64
# struct loop_config: fd, block_size, then struct loop_info64 (lo_device, lo_inode,
# lo_rdevice, lo_offset, lo_sizelimit, lo_number, lo_encrypt_type, lo_encrypt_key_size,
# lo_flags, lo_file_name[64], lo_crypt_name[64], lo_encrypt_key[32], lo_init[2]), then
# eight reserved u64.
_LOOP_CONFIG = struct.Struct("=II QQQQQ IIII 64s 64s 32s 2Q 8Q")
_LOOP_CONTROL = "/dev/loop-control"
# Another attacher may take the free device between the look-up and the configure.
_ATTACH_TRIES = 64

# Options that mount(8) turns into mount flags rather than handing them to the filesystem:
# name -> (flags set, flags cleared). Everything else goes to the filesystem as data.
_FLAG_OPTIONS: Mapping[str, tuple[int, int]] = MappingProxyType(
    {
        "ro": (MS_RDONLY, 0),
        "rw": (0, MS_RDONLY),
        "nosuid": (MS_NOSUID, 0),
        "suid": (0, MS_NOSUID),
        "nodev": (MS_NODEV, 0),
        "dev": (0, MS_NODEV),
        "noexec": (MS_NOEXEC, 0),
        "exec": (0, MS_NOEXEC),
        "sync": (MS_SYNCHRONOUS, 0),
        "async": (0, MS_SYNCHRONOUS),
        "dirsync": (MS_DIRSYNC, 0),
        "nosymfollow": (MS_NOSYMFOLLOW, 0),
        "symfollow": (0, MS_NOSYMFOLLOW),
        "noatime": (MS_NOATIME, _ATIME_FLAGS),
        "atime": (0, MS_NOATIME),
        "relatime": (MS_RELATIME, _ATIME_FLAGS),
        "norelatime": (0, MS_RELATIME),
        "strictatime": (MS_STRICTATIME, _ATIME_FLAGS),
        "nostrictatime": (0, MS_STRICTATIME),
        "nodiratime": (MS_NODIRATIME, 0),
        "diratime": (0, MS_NODIRATIME),
        "lazytime": (MS_LAZYTIME, 0),
        "nolazytime": (0, MS_LAZYTIME),
        "defaults": (0, 0),
    }
)
# Options only mount(8) itself reads (fstab's); the kernel would refuse them.
_USERSPACE_OPTIONS = frozenset({"auto", "noauto", "nofail", "user", "nouser", "users", "_netdev"})

# statvfs(3) f_flag bits -> the per-mount flags a read-only remount must keep.
_KEPT_ON_REMOUNT = (
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)


class SystemCallFailed(HostFailure):
    """A system call failed; `errno` says why."""

    def __init__(self, call: str, subject: str, code: int, hint: str = "") -> None:
        self.call = call
        self.errno = code
        detail = f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"
        super().__init__(f"{call} {subject}: {detail}{f'; {hint}' if hint else ''}")


class LoopDevicesExhausted(SystemCallFailed):
    """No free loop device, and the kernel would not make another."""


_libc = ctypes.CDLL(None, use_errno=True)
_mount = _libc.mount
_mount.argtypes = (
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
)
_mount.restype = ctypes.c_int
_umount2 = _libc.umount2
_umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_umount2.restype = ctypes.c_int


def _encode(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount_flags(options: Iterable[str]) -> tuple[int, str]:
    """Split mount(8)-style options into mount flags and the filesystem's data string."""
    flags = 0
    data: list[str] = []
    for option in options:
        if option in _FLAG_OPTIONS:
            set_bits, cleared = _FLAG_OPTIONS[option]
            flags = (flags & ~cleared) | set_bits
        elif option not in _USERSPACE_OPTIONS and not option.startswith("x-"):
            data.append(option)
    return flags, ",".join(data)


def mount(source: str, target: str, fs_type: str | None, flags: int, data: str = "") -> None:
    """mount(2); raises `SystemCallFailed`."""
    if _mount(_encode(source), _encode(target), _encode(fs_type), flags, _encode(data)) != 0:
        code = ctypes.get_errno()
        hint = ""
        if code == errno.EINVAL and fs_type:
            hint = f"bad option, or {source} holds no valid {fs_type} filesystem"
        raise SystemCallFailed("mount", f"{source} on {target}", code, hint)


def remount_bind_read_only(target: str) -> None:
    """Make the bind mount at `target` read-only, keeping its other per-mount flags."""
    kept = 0
    current = os.statvfs(target).f_flag
    for statvfs_bit, mount_bit in _KEPT_ON_REMOUNT:
        if current & statvfs_bit:
            kept |= mount_bit
    mount("none", target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)


def unmount(target: str) -> None:
    """umount2(2) without MNT_FORCE or MNT_DETACH: a busy mount is reported, never hidden."""
    if _umount2(_encode(target), 0) != 0:
        raise SystemCallFailed("umount", target, ctypes.get_errno())


@contextlib.contextmanager
def _opened(path: str, flags: int) -> Iterator[int]:
    """A file descriptor of `path` for the block; a failed open names the path and errno."""
    try:
        fd = os.open(path, flags | os.O_CLOEXEC)
    except OSError as exc:
        raise SystemCallFailed("open", path, exc.errno or errno.EIO) from None
    try:
        yield fd
    finally:
        os.close(fd)


def _device_ioctl(device: str, request: int, call: str) -> None:
    """Open `device`, issue an argument-less ioctl, close it."""
    with _opened(device, os.O_RDONLY) as fd:
        try:
            fcntl.ioctl(fd, request, 0)
        except OSError as exc:
            raise SystemCallFailed(call, device, exc.errno or errno.EIO) from None


def _free_loop_index(control: int) -> int:
    try:
        return int(fcntl.ioctl(control, LOOP_CTL_GET_FREE))
    except OSError as exc:
        code = exc.errno or errno.EIO
        raise LoopDevicesExhausted("LOOP_CTL_GET_FREE", _LOOP_CONTROL, code) from None


def attach_loop(backing: str, *, read_only: bool) -> str:
    """Attach `backing` (a file or a loop device) to a free loop device; buffered I/O.

    Returns "/dev/loopN". Never reuses a device that something else configures meanwhile:
    LOOP_CONFIGURE refuses a bound device (EBUSY) and the next free one is tried.
    """
    mode = os.O_RDONLY if read_only else os.O_RDWR
    with _opened(backing, mode) as backing_fd, _opened(_LOOP_CONTROL, os.O_RDWR) as control:
        name = os.fsencode(backing)[: _LO_NAME_SIZE - 1]
        config = _LOOP_CONFIG.pack(
            backing_fd, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            LO_FLAGS_READ_ONLY if read_only else 0,
            name, b"", b"", 0, 0, *([0] * 8),
        )  # fmt: skip
        for _ in range(_ATTACH_TRIES):
            device = f"/dev/loop{_free_loop_index(control)}"
            with _opened(device, mode) as device_fd:
                try:
                    fcntl.ioctl(device_fd, LOOP_CONFIGURE, config)
                except OSError as exc:
                    if exc.errno == errno.EBUSY:
                        continue  # taken by another attacher since GET_FREE
                    raise SystemCallFailed(
                        "LOOP_CONFIGURE", f"{device} with {backing}", exc.errno or errno.EIO
                    ) from None
            return device
    raise LoopDevicesExhausted("LOOP_CONFIGURE", backing, errno.EBUSY)


def detach_loop(device: str) -> None:
    """LOOP_CLR_FD. On a device that is still open the kernel only marks it to detach at
    its last close and returns success: callers look at sysfs to know which happened."""
    _device_ioctl(device, LOOP_CLR_FD, "LOOP_CLR_FD")


def refresh_loop_size(device: str) -> None:
    """LOOP_SET_CAPACITY: the device takes the current size of its backing file."""
    _device_ioctl(device, LOOP_SET_CAPACITY, "LOOP_SET_CAPACITY")
