"""The kubelet's side of the Flexvolume call model, for the tests: the installed executable
run as a real process, stdout and stderr combined and parsed as one JSON value, with the
options JSON the kubelet builds (pod keys, a base64 secret) and its pod directory layout.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .process import ServerProcess, run_cli, serve_process

SECRET = "s3cr3t-Flexvolume-password"
SECRET_B64 = base64.b64encode(SECRET.encode()).decode()
DRIVER_DIR = "aiocsi.dev~loop"
EXEC_TIMEOUT = 120


@dataclass(frozen=True)
class Answer:
    reply: dict[str, object]
    code: int
    output: bytes

    @property
    def status(self) -> object:
        return self.reply.get("status")


def kubelet_options(
    volume: str,
    pod_uid: str,
    *,
    fs_type: str = "",
    read_write: str = "rw",
    **user: str,
) -> str:
    """The options JSON the kubelet passes to `mount` (user options merged last)."""
    return json.dumps(
        {
            "kubernetes.io/fsType": fs_type,
            "kubernetes.io/readwrite": read_write,
            "kubernetes.io/pvOrVolumeName": volume,
            "kubernetes.io/pod.name": f"pod-{pod_uid[:8]}",
            "kubernetes.io/pod.namespace": "default",
            "kubernetes.io/pod.uid": pod_uid,
            "kubernetes.io/serviceAccount.name": "default",
            "kubernetes.io/mounterArgs.FsGroup": "2000",
            "kubernetes.io/secret/password": SECRET_B64,
            **user,
        }
    )


@dataclass
class Kubelet:
    root: Path
    executable: Path
    socket_path: Path

    def pod_dir(self, pod_uid: str, volume: str) -> Path:
        """A pod volume dir, made as the kubelet makes it (0750) before it calls mount."""
        path = self.root / "kubelet" / "pods" / pod_uid / "volumes" / DRIVER_DIR / volume
        path.mkdir(mode=0o750, parents=True, exist_ok=True)
        return path

    @property
    def staging_root(self) -> Path:
        return self.root / "kubelet/plugins/kubernetes.io/flexvolume/aiocsi.dev/loop/mounts"

    def run(self, *args: str, python: Sequence[str] = ()) -> Answer:
        """Exec the installed driver (or `python ... driver`) and parse all it printed."""
        proc = subprocess.run(
            [*python, str(self.executable), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=EXEC_TIMEOUT,
            check=False,
        )
        reply = json.loads(proc.stdout)  # the whole output is exactly one JSON value
        assert isinstance(reply, dict), proc.stdout
        return Answer(reply, proc.returncode, proc.stdout)

    def ok(self, *args: str) -> Answer:
        answer = self.run(*args)
        assert answer.status == "Success", answer
        assert answer.code == 0, answer
        return answer

    def fails(self, *args: str) -> str:
        """Run an op that must fail the way the kubelet sees a failure; its message."""
        answer = self.run(*args)
        assert (answer.status, answer.code) == ("Failure", 1), answer
        return str(answer.reply["message"])

    def mount(self, pod_uid: str, volume: str, **options: str) -> Path:
        target = self.pod_dir(pod_uid, volume)
        self.ok("mount", str(target), kubelet_options(volume, pod_uid, **options))
        return target

    def unmount(self, target: Path) -> None:
        self.ok("unmount", str(target))
        # The kubelet removes the dir after a successful unmount, if the driver has not.
        with contextlib.suppress(FileNotFoundError):
            target.rmdir()

    def timed(self, n: int, *args: str) -> float:
        """The median wall time of `n` runs, in ms; every run must succeed."""
        times = []
        for _ in range(n):
            started = time.perf_counter()
            self.ok(*args)
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)


def install(root: Path) -> Kubelet:
    socket_path = root / "flex.sock"
    result = run_cli(
        [
            "flexvolume",
            "install",
            "--plugin-dir",
            str(root / "plugins"),
            "--flexvolume-endpoint",
            f"unix://{socket_path}",
        ]
    )
    assert result.returncode == 0, result.stderr
    executable = root / "plugins" / DRIVER_DIR / "loop"
    assert os.access(executable, os.X_OK)
    return Kubelet(root, executable, socket_path)


@contextlib.asynccontextmanager
async def flex_driver(root: Path, name: str = "srv") -> AsyncIterator[ServerProcess]:
    async with serve_process(
        root, "--flexvolume-endpoint", f"unix://{root / 'flex.sock'}", name=name
    ) as server:
        yield server


def flexvolume_lines(server: ServerProcess) -> list[dict[str, object]]:
    return [line for line in server.log_lines() if line.get("event") == "flexvolume"]


def mounts_under(root: Path) -> list[str]:
    prefix = f"{root}/"
    with Path("/proc/self/mountinfo").open() as table:
        points = [line.split(" ")[4] for line in table]
    return [p for p in points if p.startswith(prefix)]
