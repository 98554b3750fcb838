"""Run host commands as argv lists and translate their failures into `CommandFailed`."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from aiocsi.errors import CommandFailed

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

    from aiocsi.threads import WorkerPool

_log = structlog.get_logger("aiocsi.host")

# Shells' conventions, so a log reader recognises them at a glance.
NOT_FOUND_CODE = 127
NOT_EXECUTABLE_CODE = 126
_READ_CHUNK = 65536

# Told how long each command took: (its name, e.g. "mkfs.ext4", seconds). Process-wide, like
# the log configuration: set once by the server when metrics are served.
_observer: list[Callable[[str, float], None]] = []


def observe_commands(observer: Callable[[str, float], None] | None) -> None:
    """Call `observer` after every command (None: stop)."""
    _observer[:] = [] if observer is None else [observer]


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def _command_env() -> dict[str, str]:
    # Untranslated tool messages: fs.py recognises resize2fs's refusal by its text, and an
    # operator reads the same words in every node's log.
    return {**os.environ, "LC_ALL": "C"}


def _read_all(fd: int) -> str:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, _READ_CHUNK, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks).decode(errors="replace")


def _run_blocking(argv: tuple[str, ...]) -> Completed:
    """Run `argv` to completion on this (worker) thread.

    Output goes to two memory files read once after the exit, not to pipes: the thread
    gives up the GIL while the child is spawned (vfork) and while it runs; draining pipes
    would take it back for every chunk of output. (os.posix_spawn would hold the GIL while
    the child execs, stalling the event loop.)
    """
    out = os.memfd_create("aiocsi-stdout", os.MFD_CLOEXEC)
    err = os.memfd_create("aiocsi-stderr", os.MFD_CLOEXEC)
    try:
        child = subprocess.Popen(
            argv,
            # A tool that asks a question (mke2fs does on a tty) must get EOF, not hang.
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=_command_env(),
        )
        returncode = child.wait()
        return Completed(argv, returncode, _read_all(out), _read_all(err))
    finally:
        os.close(out)
        os.close(err)


async def _spawn(workers: WorkerPool, argv: tuple[str, ...]) -> Completed:
    # Spawned and waited for in a worker thread: a spawn on the loop thread blocks it until
    # the child has exec'd (docs/benchmarks.md). The command is never cancelled half-way:
    # operations run to completion in server-owned tasks (docs/architecture.md).
    try:
        return await workers.run_sync(_run_blocking, argv)
    except FileNotFoundError:
        return Completed(argv, NOT_FOUND_CODE, "", f"command not found: {argv[0]}")
    except PermissionError:
        return Completed(argv, NOT_EXECUTABLE_CODE, "", f"permission denied: {argv[0]}")


async def run(
    workers: WorkerPool,
    argv: Sequence[str],
    *,
    check: bool = True,
    ok_codes: Collection[int] = (0,),
) -> Completed:
    """Run `argv` (never through a shell) and return its exit code and decoded output.

    With `check`, an exit code outside `ok_codes` raises `CommandFailed`; a missing
    executable counts as exit code 127.
    """
    command = tuple(argv)
    started = time.perf_counter()
    done = await _spawn(workers, command)
    seconds = time.perf_counter() - started
    for observe in _observer:
        observe(command[0].rpartition("/")[2], seconds)
    _log.debug(
        "host_command",
        argv=list(command),
        returncode=done.returncode,
        duration_ms=round(seconds * 1000, 2),
    )
    if check and done.returncode not in ok_codes:
        raise CommandFailed(command, done.returncode, done.stderr)
    return done
