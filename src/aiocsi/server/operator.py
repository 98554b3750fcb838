"""What `--http-endpoint` turns on: metrics and their observers, the lag watchdog, the
endpoint serving them. Off, none of it exists and no call pays for it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiocsi.host import process
from aiocsi.metrics import Metrics, Runtime
from aiocsi.server.http import OperatorEndpoint
from aiocsi.server.lag import LoopLag
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
        self.lag = LoopLag(self.metrics.observe_loop_lag)
        self._engine = engine
        self._tracker = tracker
        self._log_stream = log_stream
        host, port = config.http_endpoint
        self.endpoint = OperatorEndpoint(
            host,
            port,
            metrics=self.metrics,
            snapshot=self.snapshot,
            health=engine.health,
            lag=self.lag,
        )

    @property
    def observers(self) -> tuple[CallObserver, ...]:
        return (self.metrics.observe_call,)

    async def snapshot(self) -> Runtime:
        return await take_snapshot(self._engine, self._tracker, self._log_stream)

    async def start(self) -> None:
        """After the engine started: the census reads the store's database."""
        process.observe_commands(self.metrics.observe_command)
        committer = getattr(self._engine.ctx.store, "committer", None)
        if committer is not None and hasattr(committer, "observer"):
            committer.observer = self.metrics.commit_observer()
        self.lag.start()
        await self.endpoint.start()

    async def close(self) -> None:
        await self.endpoint.close()
        await self.lag.stop()
        process.observe_commands(None)
