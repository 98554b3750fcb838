"""Server lifecycle: build the services, bind the socket, serve, drain on a signal."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import uvloop
from grpclib.server import Server

from aiocsi import __version__
from aiocsi.config import Config, EventLoop
from aiocsi.engine.core import Engine
from aiocsi.flexvolume.frontend import FlexvolumeFrontEnd
from aiocsi.flexvolume.server import FlexvolumeServer
from aiocsi.host.lock import PoolLocked
from aiocsi.logging import LogStream, configure, get_logger
from aiocsi.server.interceptor import intercept
from aiocsi.server.operator import OperatorSide
from aiocsi.server.socket import BoundSocket, SocketError, bind_unix_socket
from aiocsi.server.tracker import CallTracker
from aiocsi.services import build_services

EXIT_OK = 0
EXIT_STARTUP = 2
# A second signal means "now": the log lines get this long to reach a slow reader.
ABANDON_FLUSH = 1.0

log = get_logger("aiocsi.server")


class DriverServer:
    """The running driver: services on a socket, with a drain that honours a grace period."""

    def __init__(self, config: Config, log_stream: LogStream | None = None) -> None:
        self.config = config
        self.tracker = CallTracker()
        self.engine = Engine(config)
        self.operator = (
            OperatorSide(config, self.engine, self.tracker, log_stream)
            if config.http_endpoint is not None
            else None
        )
        observers = self.operator.observers if self.operator else ()
        self._server = Server(
            intercept(build_services(config, self.engine), self.tracker, observers)
        )
        self._bound: BoundSocket | None = None
        self._started = False
        self.flexvolume: FlexvolumeServer | None = None
        if config.flexvolume_socket_path is not None:
            frontend = FlexvolumeFrontEnd(config, self.engine)
            self.flexvolume = FlexvolumeServer(
                config.flexvolume_socket_path, frontend, self.tracker, self.engine.workers
            )

    async def start(self, before_serving: Callable[[], None] | None = None) -> None:
        """Take the socket, then the pool, then serve. Raises SocketError or PoolLocked.

        `before_serving` runs once the engine has started, before any call is accepted.
        """
        # The socket first: a live server on it must never see its pool reconciled under it.
        self._bound = await self.engine.workers.run_sync(
            bind_unix_socket, self.config.socket_path, self.config.socket_mode
        )
        if self.flexvolume is not None:
            await self.flexvolume.bind()
        await self.engine.start()
        if before_serving is not None:
            before_serving()
        await self._server.start(sock=self._bound.sock)
        if self.flexvolume is not None:
            await self.flexvolume.start()
        self._started = True
        if self.operator is not None:
            await self.operator.start()
        log.info(
            "serving",
            endpoint=str(self.config.socket_path),
            flexvolume_endpoint=str(self.config.flexvolume_socket_path or ""),
            mode=self.config.mode.value,
            node_id=self.config.node_id,
            driver=self.config.driver_name,
            version=__version__,
            event_loop=type(asyncio.get_running_loop()).__module__.partition(".")[0],
        )

    async def drain(self, cut_short: asyncio.Event | None = None) -> None:
        """Refuse new calls, then wait for calls in flight until idle, grace or `cut_short`."""
        self.tracker.draining = True
        grace = self.config.shutdown_grace
        log.info("draining", in_flight=self.tracker.active, grace_s=grace)
        waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._settled())}
        if cut_short is not None:
            waiters.add(asyncio.ensure_future(cut_short.wait()))
        try:
            await asyncio.wait(waiters, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if self.busy:
            reason = "signal" if cut_short is not None and cut_short.is_set() else "grace_expired"
            log.warning("drain_cut_short", reason=reason, in_flight=self.tracker.active)

    @property
    def busy(self) -> bool:
        return bool(self.tracker.active or self.engine.operations.active)

    async def abandon(self) -> None:
        """Stop without waiting: work in flight is finished or undone by the next start's
        reconcile, since every side effect is recorded before and after it happens."""
        if self._bound is not None:
            self._bound.remove()
        if self.flexvolume is not None:
            self.flexvolume.remove_socket()
        await self.engine.close()
        log.warning(
            "stopped_abandoning_work",
            in_flight=self.tracker.active,
            operations=self.engine.operations.active,
        )

    async def _settled(self) -> None:
        await self.tracker.wait_idle()
        await self.engine.drain()

    async def close(self) -> None:
        if self.operator is not None:
            await self.operator.close()
        if self._bound is not None:
            self._bound.remove()
        if self.flexvolume is not None:
            await self.flexvolume.close()
        if self._started:
            self._server.close()
            await self._server.wait_closed()
        await self.engine.close()
        log.info("stopped")


class _Signals:
    """First SIGTERM/SIGINT starts the drain; a second one cuts it short."""

    def __init__(self) -> None:
        self.count = 0
        self.stop = asyncio.Event()
        self.again = asyncio.Event()

    def __call__(self, signum: int) -> None:
        self.count += 1
        log.info("signal_received", signal=signal.Signals(signum).name, count=self.count)
        (self.stop if self.count == 1 else self.again).set()

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self, signum)


def _settle_heap() -> None:
    """What start-up made lives as long as the process: keep it out of the collector's full
    passes, which otherwise walk it all and stall the loop (tens of ms on a big heap). Done
    before serving: at 10,000 volumes the collection itself takes ~35 ms, which the first
    calls would otherwise wait out."""
    gc.collect()
    gc.freeze()


async def serve(config: Config, log_stream: LogStream | None = None) -> int:
    signals = _Signals()
    signals.install()
    driver = DriverServer(config, log_stream)
    try:
        await driver.start(before_serving=_settle_heap)
    except (SocketError, PoolLocked) as exc:
        log.error("startup_failed", reason=str(exc))  # noqa: TRY400 - expected; no traceback
        print(f"aiocsi serve: error: {exc}", file=sys.stderr)  # noqa: T201 - one-line reason
        await driver.close()
        return EXIT_STARTUP
    try:
        await signals.stop.wait()
        await driver.drain(signals.again)
        if signals.again.is_set() and driver.busy:
            # A second signal means "now": waiting for children (mkfs, copies) is not "now".
            await driver.abandon()
            if log_stream is not None:
                # The engine's workers are closed by now: a thread of its own.
                await asyncio.to_thread(log_stream.flush, ABANDON_FLUSH)
            os._exit(EXIT_OK)
    finally:
        await driver.close()
    return EXIT_OK


def _loop_factory(kind: EventLoop) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind is EventLoop.UVLOOP:
        # About a tenth more lifecycles/s under churn than the standard loop on 2 cores,
        # for the same work: its callbacks, futures and socket calls cost less.
        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(config: Config) -> int:
    # Every line is written by the stream's thread: a reader that stops reading must not
    # stop the loop (DESIGN.md §3).
    log_stream = LogStream(sys.stdout.fileno())
    configure(config.log_format.value, config.log_level, cache=True, buffered=log_stream)
    try:
        with asyncio.Runner(loop_factory=_loop_factory(config.event_loop)) as runner:
            return runner.run(serve(config, log_stream))
    finally:
        log_stream.close(timeout=config.shutdown_grace)
