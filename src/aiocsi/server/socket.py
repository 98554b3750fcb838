"""The unix socket: safe creation, stale-socket takeover, refusal to steal a live one."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

_LIVE_CHECK_TIMEOUT = 1.0


class SocketError(Exception):
    """The socket cannot be created; the message is one line for the operator."""


@dataclass(frozen=True)
class BoundSocket:
    sock: socket.socket
    path: Path
    inode: int

    def remove(self) -> None:
        """Remove the socket file if it is still the one we created."""
        with contextlib.suppress(FileNotFoundError):
            if os.lstat(self.path).st_ino == self.inode:
                self.path.unlink()


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_LIVE_CHECK_TIMEOUT)
    try:
        probe.connect(os.fspath(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise SocketError(f"cannot check whether {path} is in use: {exc.strerror}") from exc
    else:
        return True
    finally:
        probe.close()


def _clear_stale(path: Path) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise SocketError(f"{path} exists and is not a socket; refusing to replace it")
    if _answers(path):
        raise SocketError(
            f"another server is answering on {path}; stop it or choose another --endpoint"
        )
    path.unlink()


def _unsafe_directory(directory: Path, *, holds_socket: bool) -> str | None:
    """Why someone other than root (or us) could replace what lives in `directory`."""
    info = directory.stat()
    if info.st_uid not in (0, os.geteuid()):
        return f"is owned by uid {info.st_uid}"
    if not info.st_mode & stat.S_IWOTH:
        return None
    # Sticky (like /tmp): others cannot remove or rename our entries, so an ancestor is
    # fine. The socket's own directory is not: while the driver is down, anyone could bind
    # its name first and collect the requests (and secrets) meant for the driver.
    if holds_socket:
        return "is world-writable"
    if not info.st_mode & stat.S_ISVTX:
        return "is world-writable without the sticky bit"
    return None


def check_socket_directory(directory: Path) -> None:
    """Refuse a socket directory that a user other than root could tamper with.

    Checks the directory and each ancestor, both as written and with symlinks resolved.
    """
    real = Path(os.path.realpath(directory))
    checks = {directory: True, real: True}
    for parent in (*directory.parents, *real.parents):
        checks.setdefault(parent, False)
    for candidate, holds_socket in checks.items():
        try:
            why = _unsafe_directory(candidate, holds_socket=holds_socket)
        except OSError as exc:
            raise SocketError(f"cannot inspect {candidate}: {exc.strerror}") from exc
        if why is not None:
            what = "socket directory" if holds_socket else "a parent of the socket directory"
            raise SocketError(
                f"{what} {candidate} {why}; refusing to serve there "
                "(use a directory only root can write, e.g. mode 0750)"
            )


def bind_unix_socket(path: Path, mode: int) -> BoundSocket:
    """Create the directory if missing, check it is safe, replace a stale socket, bind with
    exactly `mode`."""
    try:
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        raise SocketError(f"cannot create socket directory {path.parent}: {exc.strerror}") from exc
    check_socket_directory(path.parent)
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask keeps the socket from ever being more open than `mode`, even briefly.
    previous = os.umask(0o777 & ~mode)
    try:
        sock.bind(os.fspath(path))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise SocketError(f"{path} was taken by another process while starting") from exc
        raise SocketError(f"cannot bind {path}: {exc.strerror}") from exc
    finally:
        os.umask(previous)
    path.chmod(mode)
    sock.setblocking(False)  # noqa: FBT003 - the socket API
    return BoundSocket(sock=sock, path=path, inode=os.lstat(path).st_ino)
