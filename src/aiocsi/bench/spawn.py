"""`--spawn`: run `aiocsi serve` as a child process on the run's own pool and socket.

The child gets its own session, so a Ctrl-C on the terminal reaches only the bench, which
then deletes its volumes through the still-running driver before stopping it by PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import anyio

from aiocsi.config import MAX_SOCKET_PATH_BYTES

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

    from anyio.abc import Process

    from aiocsi.bench.config import VolumeSpec
    from aiocsi.bench.workspace import Workspace

START_TIMEOUT_S = 30.0
SHUTDOWN_GRACE_S = 10
# The driver's own grace plus room for its exit.
STOP_TIMEOUT_S = SHUTDOWN_GRACE_S + 10.0
_POLL_S = 0.02
_LOG_TAIL_LINES = 20


class SetupError(Exception):
    """The run could not start: no driver, no socket, no work directory."""


def driver_argv(
    workspace: Workspace, socket_path: Path, spec: VolumeSpec, extra: Sequence[str]
) -> list[str]:
    """Our flags first, so that a repeated flag in `extra` (--driver-arg) wins."""
    return [
        sys.executable,
        "-m",
        "aiocsi",
        "serve",
        "--endpoint",
        f"unix://{socket_path}",
        "--pool",
        str(workspace.driver_dir / "pool"),
        "--node-id",
        "bench-node",
        "--allowed-path-root",
        str(workspace.root),
        "--default-volume-size",
        str(spec.size),
        "--shutdown-grace",
        str(SHUTDOWN_GRACE_S),
        "--log-format",
        "json",
        *extra,
    ]


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-_LOG_TAIL_LINES:])


async def _answers(socket_path: Path) -> bool:
    try:
        stream = await anyio.connect_unix(socket_path)
    except OSError:
        return False
    await stream.aclose()
    return True


async def _wait_until_serving(process: Process, socket_path: Path, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not await _answers(socket_path):
        if process.returncode is not None or time.monotonic() > deadline:
            state = (
                f"exited with {process.returncode}"
                if process.returncode is not None
                else f"did not serve within {START_TIMEOUT_S:.0f}s"
            )
            tail = await anyio.to_thread.run_sync(_tail, log)
            raise SetupError(f"the spawned driver {state}; its last output:\n{tail}")
        await anyio.sleep(_POLL_S)


async def _stop(process: Process) -> None:
    """SIGTERM by PID, wait for the drain, SIGKILL if it does not end."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(STOP_TIMEOUT_S):
            await process.wait()
        if process.returncode is None:
            process.kill()
    await process.aclose()


class Spawned:
    """A child process run from `argv` in its own session, output to `log`, serving on
    `socket_path`; `restart` stops it and starts it again on the same files."""

    def __init__(self, argv: Sequence[str], socket_path: Path, log: Path) -> None:
        if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH_BYTES:
            raise SetupError(f"socket path {socket_path} is too long; use a shorter --workdir")
        self.argv = list(argv)
        self.socket_path = socket_path
        self.log = log
        self._process: Process | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("not running")
        return self._process.pid

    async def start(self) -> None:
        """Start the process and wait until it accepts connections on the socket."""
        output = await anyio.to_thread.run_sync(lambda: self.log.open("ab"))
        try:
            self._process = await anyio.open_process(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            output.close()
        await _wait_until_serving(self._process, self.socket_path, self.log)

    async def stop(self) -> None:
        if self._process is not None:
            with anyio.CancelScope(shield=True):
                await _stop(self._process)
            self._process = None


@contextlib.asynccontextmanager
async def _spawned(argv: Sequence[str], socket_path: Path, log: Path) -> AsyncIterator[Spawned]:
    """Run `argv` until the body ends (stopping it also when the start fails)."""
    child = Spawned(argv, socket_path, log)
    try:
        await child.start()
        yield child
    finally:
        await child.stop()


@contextlib.asynccontextmanager
async def spawned_driver(
    workspace: Workspace, spec: VolumeSpec, extra: Sequence[str], log_path: Path | None
) -> AsyncIterator[Spawned]:
    """Yield a fresh driver serving on its socket; afterwards stop it and sweep what it left."""
    socket_path = workspace.driver_dir / "csi.sock"
    log = log_path or workspace.driver_dir / "driver.log"
    try:
        async with _spawned(
            driver_argv(workspace, socket_path, spec, extra), socket_path, log
        ) as child:
            yield child
    finally:
        with anyio.CancelScope(shield=True):
            # The driver is gone: whatever it still had mounted or attached is ours to undo.
            await workspace.sweep()


@contextlib.asynccontextmanager
async def spawned_bare(workspace: Workspace) -> AsyncIterator[Path]:
    """Yield the socket of a bare grpclib Identity server (`aiocsi.bench.bare`)."""
    socket_path = workspace.driver_dir / "bare.sock"
    argv = [sys.executable, "-m", "aiocsi.bench.bare", str(socket_path)]
    async with _spawned(argv, socket_path, workspace.driver_dir / "bare.log"):
        yield socket_path
