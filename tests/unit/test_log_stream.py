"""The log stream: a reader that stops reading costs lines, never the caller's time."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator

import pytest

from aiocsi.logging import LogStream, configure, get_logger

F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), absent from older Pythons' fcntl
PIPE_BYTES = 4096


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read, write = os.pipe()
    fcntl.fcntl(write, F_SETPIPE_SZ, PIPE_BYTES)
    try:
        yield read, write
    finally:
        configure("json", "info")
        os.close(read)
        os.close(write)


def _read_until(fd: int, marker: bytes, timeout: float = 10.0) -> bytes:
    """Read `fd` (in this thread) until `marker` has arrived and the pipe is drained."""
    os.set_blocking(fd, False)
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{marker!r} never arrived; got {len(data)} bytes")
        try:
            data += os.read(fd, 65536)
        except BlockingIOError:
            time.sleep(0.01)
    return data


def test_a_stalled_reader_costs_lines_not_time_and_the_loss_is_reported(
    pipe: tuple[int, int],
) -> None:
    read, write = pipe
    stream = LogStream(write, max_lines=50)
    configure("json", "info", buffered=stream)
    log = get_logger("test")
    started = time.perf_counter()
    for n in range(2000):
        log.info("line", n=n, padding="x" * 100)
    elapsed = time.perf_counter() - started
    # Nobody reads: the pipe holds ~30 lines, the buffer 50; the rest are dropped, at once.
    assert elapsed < 2.0
    dropped = stream.statistics().dropped
    assert dropped > 1800
    data = _read_until(read, b'"log_dropped"')
    events = [json.loads(line) for line in data.decode().splitlines()]
    [notice] = [e for e in events if e["event"] == "log_dropped"]
    assert notice["count"] == dropped
    assert notice["level"] == "warning"
    kept = [e["n"] for e in events if e["event"] == "line"]
    assert kept == sorted(kept)
    assert len(kept) + dropped == 2000
    assert stream.close(timeout=5)


def test_flush_writes_every_line_before_it_returns(pipe: tuple[int, int]) -> None:
    read, write = pipe
    stream = LogStream(write)
    configure("json", "info", buffered=stream)
    for n in range(200):
        get_logger("test").info("line", n=n)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(_read_until(read, b'"n": 199')))
    reader.start()
    assert stream.flush(timeout=10)
    reader.join(timeout=10)
    assert stream.statistics() == stream.statistics().__class__(buffered=0, dropped=0)
    lines = received[0].decode().splitlines()
    assert [json.loads(line)["n"] for line in lines] == list(range(200))
    assert stream.close(timeout=5)


def test_flush_gives_up_after_its_timeout_when_nobody_reads(pipe: tuple[int, int]) -> None:
    _, write = pipe
    stream = LogStream(write)
    configure("json", "info", buffered=stream)
    for n in range(500):
        get_logger("test").info("line", n=n, padding="x" * 100)
    started = time.monotonic()
    assert not stream.flush(timeout=0.2)
    assert time.monotonic() - started < 2.0
