"""`aiocsi flexvolume install`: write the executable into the kubelet's plugin dir.

The file appears whole or not at all: it is written to a dot-named temporary file in the
driver's directory (the kubelet ignores dot-files), made durable, then renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import re
from importlib import resources
from pathlib import Path

from aiocsi.host.files import _fsync_dir

DRIVER_NAME = "aiocsi.dev/loop"
DRIVER_DIR = "aiocsi.dev~loop"  # <vendor>~<driver>: how the kubelet finds `aiocsi.dev/loop`
EXECUTABLE = "loop"
DEFAULT_PLUGIN_DIR = "/usr/libexec/kubernetes/kubelet-plugins/volume/exec"
_ENDPOINT_LINE = re.compile(r'^ENDPOINT = "[^"\n]*"', re.MULTILINE)
_MODE = 0o755


def template() -> str:
    return resources.files("aiocsi.flexvolume").joinpath("executable.py").read_text("utf-8")


def render(socket_path: Path) -> str:
    """The executable's text, talking to `socket_path`."""
    text, count = _ENDPOINT_LINE.subn(f"ENDPOINT = {str(socket_path)!r}", template(), count=1)
    if count != 1:
        raise RuntimeError("the executable template has lost its ENDPOINT line")
    return text


def install(plugin_dir: Path, socket_path: Path) -> Path:
    """Write `plugin_dir/aiocsi.dev~loop/loop` atomically; returns its path."""
    directory = plugin_dir / DRIVER_DIR
    directory.mkdir(mode=_MODE, parents=True, exist_ok=True)
    target = directory / EXECUTABLE
    temporary = directory / f".{EXECUTABLE}.{os.getpid()}.tmp"
    data = render(socket_path).encode("utf-8")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()  # left by an installer that died here
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _MODE)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, _MODE)  # the umask must not take the execute bits away
            os.fsync(fd)
        finally:
            os.close(fd)
        temporary.replace(target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _fsync_dir(directory)
    return target
