"""What `--http-endpoint` turns on: metrics and their observers, the lag watchdog, the
endpoint serving them. Off, none of it exists and no call pays for it."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiocsi.host import process
from aiocsi.metrics import Metrics
from aiocsi.server.http import OperatorEndpoint
from aiocsi.server.lag import LoopLagWatch
from aiocsi.server.runtime import take_snapshot

if TYPE_CHECKING:
    from aiocsi.config import Config
    from aiocsi.engine.core import Engine
    from aiocsi.logging import LogStream
    from aiocsi.server.interceptor import CallObserver
    from aiocsi.server.tracker import CallTracker


class OperatorSide:
    def __init__(
        self,
        config: Config,
        engine: Engine,
        tracker: CallTracker,
        log_stream: LogStream | None,
    ) -> None:
        assert config.http_endpoint is not None  # noqa: S101 - built only when it is set
        self.metrics = Metrics(config.driver_name)
        self.lag = LoopLagWatch(self.metrics.observe_loop_lag)
        self._engine = engine
        self._tracker = tracker
        self._log_stream = log_stream
        host, port = config.http_endpoint
        # Every blocking step of a scrape (the census, the rendering) runs in these threads.
        self._run_sync = engine.workers.run_sync
        # One scrape renders at a time: the collector holds the scrape's snapshot meanwhile.
        self._scrape = asyncio.Lock()
        self.endpoint = OperatorEndpoint(
            host,
            port,
            metrics_text=self.metrics_text,
            health=engine.health,
            lag=self.lag,
        )

    @property
    def observers(self) -> tuple[CallObserver, ...]:
        return (self.metrics.observe_call,)

    async def metrics_text(self) -> bytes:
        async with self._scrape:
            runtime = await take_snapshot(
                self._engine, self._tracker, self._log_stream, self._run_sync
            )
            return await self._run_sync(self.metrics.render, runtime)

    async def start(self) -> None:
        """After the engine started: the census reads the store's database."""
        process.observe_commands(self.metrics.observe_command)
        self._engine.resources.store.committer.observer = self.metrics.commit_observer()
        self.lag.start()
        await self.endpoint.start()

    async def close(self) -> None:
        await self.endpoint.close()
        await self.lag.stop()
        process.observe_commands(None)
