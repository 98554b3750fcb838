"""The socket's directory must be one only root (or the driver's user) can change."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiocsi.server.socket import SocketError, bind_unix_socket, check_socket_directory


@pytest.fixture
def base() -> Iterator[Path]:
    # mkdtemp is 0700 under /tmp (1777): a safe place to build unsafe ones.
    root = Path(tempfile.mkdtemp(prefix="aiocsi-sock-"))
    try:
        yield root
    finally:
        for path in sorted(root.rglob("*"), reverse=True):
            path.unlink() if path.is_symlink() or not path.is_dir() else path.rmdir()
        root.rmdir()


def test_a_private_directory_is_accepted(base: Path) -> None:
    check_socket_directory(base)
    group = base / "group"
    group.mkdir(mode=0o770)
    check_socket_directory(group)  # group access is the operator's choice (--socket-mode)


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o773])
def test_a_world_writable_socket_directory_is_refused(base: Path, mode: int) -> None:
    shared = base / "shared"
    shared.mkdir()
    shared.chmod(mode)
    with pytest.raises(SocketError, match=f"socket directory {shared} is world-writable"):
        check_socket_directory(shared)
    with pytest.raises(SocketError):
        bind_unix_socket(shared / "csi.sock", 0o600)
    assert not (shared / "csi.sock").exists()


def test_a_world_writable_parent_needs_the_sticky_bit(base: Path) -> None:
    parent = base / "parent"
    (parent / "sock").mkdir(parents=True)
    parent.chmod(0o777)
    with pytest.raises(SocketError, match=r"parent .* without the sticky bit"):
        check_socket_directory(parent / "sock")
    parent.chmod(0o1777)
    check_socket_directory(parent / "sock")


def test_a_symlink_into_an_unsafe_parent_is_refused(base: Path) -> None:
    unsafe = base / "unsafe"
    (unsafe / "sock").mkdir(parents=True)
    unsafe.chmod(0o777)
    (base / "link").symlink_to(unsafe / "sock")
    # As written, every directory on the way looks private; resolved, one is not.
    with pytest.raises(SocketError, match=f"parent of the socket directory {unsafe} is world"):
        check_socket_directory(base / "link")


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a directory's owner needs root")
def test_a_directory_owned_by_another_user_is_refused(base: Path) -> None:
    theirs = base / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(SocketError, match="owned by uid 65534"):
        check_socket_directory(theirs)
