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


def bind_unix_socket(path: Path, mode: int) -> BoundSocket:
    """Create the directory if missing, replace a stale socket, bind with exactly `mode`."""
    try:
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        raise SocketError(f"cannot create socket directory {path.parent}: {exc.strerror}") from exc
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
