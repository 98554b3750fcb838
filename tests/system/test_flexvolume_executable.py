"""The installed executable when things go wrong around it: a driver that never answers or
answers garbage, a signal mid-call, a closed stdout. Whatever happens it prints one JSON
object (or nothing, when nobody can read it) and never a byte on stderr."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .flexvolume_kubelet import Kubelet, install, kubelet_options

POD = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"


@contextmanager
def fake_driver(path: Path, reply: bytes | None) -> Iterator[None]:
    """A socket that reads a request and answers `reply`, or never answers (None)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(65536)
            if reply is None:
                held.append(conn)
                continue
            conn.sendall(reply)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        for conn in held:
            conn.close()
        thread.join(timeout=5)


def _mount_args(kubelet: Kubelet) -> list[str]:
    target = kubelet.pod_dir(POD, "pv-odd")
    return [str(kubelet.executable), "mount", str(target), kubelet_options("pv-odd", POD)]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"", "closed the connection without an answer"),
        (b"Traceback (most recent call last):\n", "unreadable answer"),
        (b'["Success"]\n', "without a status"),
        (b'{"status": "Success", "extra": 1}\n{"second": "object"}\n', None),
    ],
)
def test_an_odd_driver_still_gives_one_json_object(
    workdir: Path, reply: bytes, expected: str | None
) -> None:
    kubelet = install(workdir)
    with fake_driver(kubelet.socket_path, reply):
        answer = kubelet.run(*_mount_args(kubelet)[1:])
    if expected is None:
        assert answer.reply == {"status": "Success", "extra": 1}  # the first line only
    else:
        assert (answer.status, answer.code) == ("Failure", 1)
        assert expected in str(answer.reply["message"])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_call_gives_one_failure(workdir: Path, signum: signal.Signals) -> None:
    kubelet = install(workdir)
    with fake_driver(kubelet.socket_path, None):
        proc = subprocess.Popen(
            _mount_args(kubelet), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        time.sleep(0.5)  # connected and waiting for the answer
        proc.send_signal(signum)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert json.loads(output) == {
        "status": "Failure",
        "message": "the aiocsi.dev/loop executable failed (interrupted)",
    }


def test_a_closed_stdout_writes_nothing_to_stderr(workdir: Path) -> None:
    kubelet = install(workdir)
    reader, writer = socket.socketpair()
    reader.close()  # nobody reads: the write fails with EPIPE
    try:
        proc = subprocess.run(
            [str(kubelet.executable), "init"],
            stdout=writer.fileno(),
            stderr=subprocess.PIPE,
            timeout=30,
            check=False,
        )
    finally:
        writer.close()
    assert proc.stderr == b""
    assert proc.returncode == 0  # init succeeded; there was just nobody to tell


def test_a_host_without_python3_still_gets_one_json_failure(workdir: Path) -> None:
    kubelet = install(workdir)
    text = kubelet.executable.read_text()
    assert "py=/usr/bin/python3\n" in text
    nopython = workdir / "nopython"
    nopython.write_text(text.replace("py=/usr/bin/python3\n", f"py={workdir}/missing\n"))
    nopython.chmod(0o755)
    proc = subprocess.run(
        [str(nopython), "init"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={"PATH": str(workdir)},  # no python3 anywhere on it
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1
    assert json.loads(proc.stdout) == {
        "status": "Failure",
        "message": "aiocsi.dev/loop needs python3 (>= 3.8) on this host",
    }
