"""The floor `bench probe --compare-bare` measures aiocsi against: grpclib and our stubs.

`python -m aiocsi.bench.bare SOCKET` serves the Identity service from the same generated
stubs the driver uses, with a Probe that answers ready and nothing else around it: no
interceptor, no log line, no metrics, no health check. It runs on uvloop, as the driver
does by default, in a process of its own, until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import uvloop
from grpclib.server import Server

from aiocsi._proto.csi import v1 as csi

_READY = csi.ProbeResponse(ready=True)


class BareIdentity(csi.IdentityBase):
    async def probe(self, message: csi.ProbeRequest) -> csi.ProbeResponse:  # noqa: ARG002
        return _READY


async def serve(socket_path: Path) -> None:
    server = Server([BareIdentity()])
    await server.start(path=os.fspath(socket_path))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()


def main(argv: list[str]) -> int:
    socket_path = Path(argv[0])
    socket_path.unlink(missing_ok=True)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(socket_path))
    finally:
        socket_path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
