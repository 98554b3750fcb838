"""Run `aiocsi serve` as a real subprocess and talk to it (signals, exit codes, stdout)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT = 15.0


def aiocsi_argv() -> list[str]:
    return [sys.executable, "-m", "aiocsi"]


def run_cli(
    args: Sequence[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*aiocsi_argv(), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, **(env or {})},
    )


def slow_tool_dir(root: Path, tool: str, delay: float) -> Path:
    """A PATH entry whose `tool` sleeps before running the real one: a slow disk on demand."""
    real = shutil.which(tool)
    assert real is not None, tool
    bindir = root / "slowbin"
    bindir.mkdir(exist_ok=True)
    shim = bindir / tool
    shim.write_text(
        f'#!/bin/sh\necho $$ >> {bindir}/started\nsleep {delay}\n{real} "$@"\nrc=$?\n'
        f"echo $$ >> {bindir}/finished\nexit $rc\n"
    )
    shim.chmod(0o755)
    return bindir


async def wait_until_started(bindir: Path, timeout: float = 10.0) -> None:
    """Wait until a slow tool from `bindir` has been started by the driver."""
    deadline = time.monotonic() + timeout
    while not (bindir / "started").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the slow tool never started")
        await asyncio.sleep(0.01)


async def wait_for_slow_tools(bindir: Path, timeout: float = 30.0) -> None:
    """Wait until every slow tool that started has finished: an orphan left running by a
    killed driver must not write to a loop device after the test released it."""
    deadline = time.monotonic() + timeout
    started, finished = bindir / "started", bindir / "finished"
    while True:
        pids = set(started.read_text().split()) if started.exists() else set()
        done = set(finished.read_text().split()) if finished.exists() else set()
        gone = all(not Path(f"/proc/{pid}").exists() for pid in pids - done)  # noqa: ASYNC240 - procfs
        if pids <= done or gone:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"slow tools still running: {pids - done}")
        await asyncio.sleep(0.05)


def answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    socket_path: Path
    stdout_path: Path
    stderr_path: Path

    def log_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.stdout_path.read_text().splitlines() if line]

    def output(self) -> bytes:
        return self.stdout_path.read_bytes() + self.stderr_path.read_bytes()

    def signal(self, signum: signal.Signals = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    async def wait(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"aiocsi (pid {self.proc.pid}) did not exit in {timeout}s")
            await asyncio.sleep(0.02)
        return code


@contextlib.asynccontextmanager
async def serve_process(
    root: Path,
    *args: str,
    env: dict[str, str] | None = None,
    name: str = "srv",
    socket_path: Path | None = None,
) -> AsyncIterator[ServerProcess]:
    """Start `aiocsi serve` with its socket and pool under `root`; end it by PID on the way out."""
    sock = socket_path or root / f"{name}.sock"
    out, err = root / f"{name}.out", root / f"{name}.err"
    argv = [
        *aiocsi_argv(),
        "serve",
        "--endpoint",
        f"unix://{sock}",
        "--pool",
        str(root / "pool"),
        "--node-id",
        "test-node",
        "--allowed-path-root",
        str(root),
        "--default-volume-size",
        "64Mi",
        *args,
    ]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(  # noqa: ASYNC220 - a fork takes ~1 ms; the harness waits anyway
            argv,
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, **(env or {})},
        )
    server = ServerProcess(proc, sock, out, err)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not answers(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"aiocsi serve did not start: {server.output()!r}")
            await asyncio.sleep(0.02)
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
