"""Churn's Probe stream, run in a process of its own, as a livenessprobe sidecar is.

In the bench's own process the stream shared an event loop with the 16 lifecycles it is
meant to observe: every Probe then also waited out that loop's lag (a p99 of several
milliseconds under churn), which is the load generator's, not the driver's.

`python -m aiocsi.bench.prober SOCKET RATE DEADLINE [COUNT]` calls Probe at RATE per second
(open loop, DEADLINE seconds per call) until COUNT calls have started, or without COUNT
until its stdin closes, then prints one JSON object:
{"latencies": [seconds...], "errors": {code: count}}.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from aiocsi.bench.lifecycles import PROBE
from aiocsi.bench.runner import measure, run_unit
from aiocsi.bench.stats import RunRecorder, Samples
from aiocsi.client.codes import grpc_code
from aiocsi.client.stubs import CsiStubs

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class ProbeCalls:
    def __init__(self, stubs: CsiStubs, rpc_timeout: float, kind: str = "probe") -> None:
        self.kind = kind
        self._stubs = stubs
        self._timeout = rpc_timeout

    def recorder(self, concurrency: int) -> RunRecorder:
        return RunRecorder(self.kind, "calls", concurrency, (PROBE,))

    async def run(self, rec: RunRecorder) -> bool:
        return await run_unit(rec.units, lambda: self.call(rec.op(PROBE)), grpc_code)

    async def call(self, samples: Samples) -> None:
        await measure(samples, lambda: self._stubs.probe(self._timeout), grpc_code)


async def probe_stream(
    probes: ProbeCalls,
    samples: Samples,
    rate: float,
    *,
    count: int | None = None,
    stop: anyio.Event | None = None,
) -> None:
    """Open loop: call i starts at start + i/rate whatever earlier calls are doing, so a
    slow answer delays no later call (no coordinated omission).
    """

    async def one() -> None:
        with contextlib.suppress(Exception):  # recorded by code in `samples`
            await probes.call(samples)

    started = time.monotonic()
    stop = stop or anyio.Event()
    async with anyio.create_task_group() as tg:
        for i in itertools.count():
            if (count is not None and i >= count) or stop.is_set():
                break
            with anyio.move_on_after(started + i / rate - time.monotonic()):
                await stop.wait()
            if stop.is_set():
                break
            tg.start_soon(one)


async def _stream(socket_path: Path, rate: float, deadline_s: float, count: int | None) -> Samples:
    stubs = CsiStubs.connect(socket_path)
    samples = Samples(PROBE)
    try:
        # The first call opens the connection: not part of what is measured.
        with contextlib.suppress(Exception):
            await stubs.probe(deadline_s)
        # Nor is this process's own garbage collector: a full pass over its start-up heap
        # (imports) took 15-20 ms and showed as the driver's slowest Probe.
        gc.collect()
        gc.freeze()
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            if count is None:

                async def stop_at_eof() -> None:
                    await anyio.to_thread.run_sync(sys.stdin.buffer.read)
                    stop.set()

                tg.start_soon(stop_at_eof)
            await probe_stream(ProbeCalls(stubs, deadline_s), samples, rate, count=count, stop=stop)
            tg.cancel_scope.cancel()
    finally:
        stubs.close()
    return samples


def main(argv: list[str]) -> int:
    socket_path, rate, deadline_s, *rest = argv
    count = int(rest[0]) if rest else None
    samples = anyio.run(_stream, Path(socket_path), float(rate), float(deadline_s), count)
    json.dump({"latencies": samples.latencies, "errors": dict(samples.errors)}, sys.stdout)
    return 0


@contextlib.asynccontextmanager
async def probe_process(
    socket_path: Path, rate: float, deadline_s: float, into: Samples, count: int | None = None
) -> AsyncIterator[None]:
    """Run a Probe stream in a child process while the body runs; add its results to `into`.

    Without `count` the stream stops when the body ends; with it, the stream makes its
    `count` calls and the exit waits for them.
    """
    argv = [
        sys.executable,
        "-m",
        "aiocsi.bench.prober",
        str(socket_path),
        str(rate),
        str(deadline_s),
    ]
    if count is not None:
        argv.append(str(count))
    async with await anyio.open_process(
        # Its own session: a Ctrl-C reaches the bench, which then ends the stream itself.
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,
        start_new_session=True,
    ) as child:
        if child.stdin is None or child.stdout is None:  # pragma: no cover - pipes asked for
            raise RuntimeError("the prober has no pipes")
        try:
            yield
        finally:
            await child.stdin.aclose()  # end of input: the stream stops
            output = b"".join([chunk async for chunk in child.stdout])
            await child.wait()
    if child.returncode != 0:
        raise RuntimeError(f"the Probe stream process failed (exit code {child.returncode})")
    result = json.loads(output)
    into.latencies.extend(result["latencies"])
    into.errors.update(result["errors"])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
