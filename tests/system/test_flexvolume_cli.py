"""`aiocsi flexvolume install|OP` and the Flexvolume socket of `aiocsi serve` as real
processes: atomic install, socket mode and the single-instance and stale-socket rules."""

from __future__ import annotations

import json
import signal
import socket
import stat
from pathlib import Path

from .flexvolume_kubelet import flex_driver, install, kubelet_options
from .process import run_cli


def test_install_writes_an_executable_atomically(workdir: Path) -> None:
    plugin_dir = workdir / "plugins"
    driver_dir = plugin_dir / "aiocsi.dev~loop"
    driver_dir.mkdir(parents=True)
    (driver_dir / ".someone-else").write_text("not ours")
    first = install(workdir)
    assert stat.S_IMODE(first.executable.stat().st_mode) == 0o755
    inode = first.executable.stat().st_ino
    result = run_cli(
        [
            "flexvolume",
            "install",
            "--plugin-dir",
            str(plugin_dir),
            "--flexvolume-endpoint",
            "unix:///run/other/flex.sock",
        ]
    )
    assert result.returncode == 0, result.stderr
    assert "installed" in result.stdout
    assert first.executable.stat().st_ino != inode  # renamed into place, not rewritten
    assert "ENDPOINT = '/run/other/flex.sock'" in first.executable.read_text()
    assert sorted(p.name for p in driver_dir.iterdir()) == [".someone-else", "loop"]


def test_install_refuses_a_missing_or_bad_endpoint(workdir: Path) -> None:
    for extra in ([], ["--flexvolume-endpoint", "tcp://1.2.3.4:5"]):
        result = run_cli(
            ["flexvolume", "install", "--plugin-dir", str(workdir), *extra],
            env={"AIOCSI_FLEXVOLUME_ENDPOINT": ""},
        )
        assert result.returncode == 2
        assert result.stderr.count("\n") <= 2, result.stderr
        assert "endpoint" in result.stderr
        assert not (workdir / "aiocsi.dev~loop").exists()


async def test_the_cli_answers_like_the_executable(cleanup: Path) -> None:
    kubelet = install(cleanup)
    endpoint = f"unix://{kubelet.socket_path}"
    init = run_cli(["flexvolume", "init"])
    assert (init.returncode, init.stderr) == (0, "")
    assert json.loads(init.stdout) == kubelet.ok("init").reply
    options = kubelet_options("pv-cli", "uid-1")
    async with flex_driver(cleanup):
        named = run_cli(["flexvolume", "--flexvolume-endpoint", endpoint, "getvolumename", options])
        assert (named.returncode, named.stderr) == (0, "")
        assert json.loads(named.stdout) == {"status": "Success", "volumeName": "pv-cli"}
    stopped = run_cli(
        ["flexvolume", "getvolumename", options], {"AIOCSI_FLEXVOLUME_ENDPOINT": endpoint}
    )
    assert (stopped.returncode, stopped.stderr) == (1, "")
    assert json.loads(stopped.stdout)["status"] == "Failure"


async def test_the_socket_is_0600_single_instance_and_removed_on_exit(cleanup: Path) -> None:
    flex = cleanup / "flex.sock"
    async with flex_driver(cleanup) as server:
        assert stat.S_IMODE(flex.stat().st_mode) == 0o600
        second = run_cli(
            [
                "serve",
                "--endpoint",
                f"unix://{cleanup / 'other.sock'}",
                "--pool",
                str(cleanup / "pool2"),
                "--flexvolume-endpoint",
                f"unix://{flex}",
                "--allowed-path-root",
                str(cleanup),
            ]
        )
        assert second.returncode == 2
        assert "another server is answering" in second.stderr
        assert flex.exists()
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
    assert not flex.exists()


async def test_a_stale_socket_is_replaced_and_a_file_is_refused(cleanup: Path) -> None:
    flex = cleanup / "flex.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(flex))
    stale.close()  # a socket file nobody answers on: what a crashed driver leaves
    async with flex_driver(cleanup):
        assert stat.S_ISSOCK(flex.stat().st_mode)
    flex.unlink(missing_ok=True)
    flex.write_text("not a socket")
    refused = run_cli(
        [
            "serve",
            "--endpoint",
            f"unix://{cleanup / 'csi.sock'}",
            "--pool",
            str(cleanup / "pool"),
            "--flexvolume-endpoint",
            f"unix://{flex}",
        ]
    )
    assert refused.returncode == 2
    assert "is not a socket" in refused.stderr
    assert flex.read_text() == "not a socket"
    same = run_cli(["serve", "--endpoint", f"unix://{flex}", "--flexvolume-endpoint", str(flex)])
    assert same.returncode == 2
    assert "must not be the CSI --endpoint" in same.stderr
