"""The operator endpoint (`--http-endpoint`): /metrics, /healthz and /readyz.

An asyncio server on the driver's own loop, with the rendering in a worker thread
(`metrics_text` sees to that). On the loop because that is what /healthz must vouch for
(a stalled loop does not answer, which is the right answer) and because the statistics it
reads belong to the loop: read from a thread of its own (prometheus_client's
`start_http_server`), they could be caught half updated. The work that grows with the
pool (the census, the text rendering) runs in worker threads, so a scrape of a pool with
10,000 volumes costs the loop a few callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

from aiocsi.engine.health import HealthChecker
from aiocsi.logging import get_logger
from aiocsi.metrics import CONTENT_TYPE
from aiocsi.server.lag import MAX_HEALTHY_LAG, LoopLagWatch
from aiocsi.server.socket import SocketError

log = get_logger("aiocsi.http")

# A request line and a few headers: a probe or a scraper sends a few hundred bytes.
MAX_REQUEST_BYTES = 8192
READ_TIMEOUT = 5.0
_TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Reply:
    status: HTTPStatus
    body: bytes
    content_type: str = _TEXT

    def encode(self) -> bytes:
        head = (
            f"HTTP/1.1 {self.status.value} {self.status.phrase}\r\n"
            f"Content-Type: {self.content_type}\r\n"
            f"Content-Length: {len(self.body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        return head.encode() + self.body


def _text(status: HTTPStatus, text: str) -> Reply:
    return Reply(status, (text + "\n").encode())


class OperatorEndpoint:
    """Serves the three paths on `host:port` until closed."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        metrics_text: Callable[[], Awaitable[bytes]],
        health: HealthChecker,
        lag: LoopLagWatch,
        max_lag: float = MAX_HEALTHY_LAG,
    ) -> None:
        self._host = host or None  # "" = every interface, as Go's ":8080"
        self._port = port
        self._metrics_text = metrics_text
        self._health = health
        self._lag = lag
        self.max_lag = max_lag
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (the port is the kernel's choice when 0 was asked for)."""
        assert self._server is not None  # noqa: S101 - only after start()
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def start(self) -> None:
        """Listen; raises SocketError (one line for the operator) if the port is taken."""
        try:
            self._server = await asyncio.start_server(
                self._serve, self._host, self._port, limit=MAX_REQUEST_BYTES
            )
        except OSError as exc:
            where = f"{self._host or ''}:{self._port}"
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise SocketError(f"http endpoint {where}: {reason}") from None
        host, port = self.address
        log.info(
            "http_serving", address=f"{host}:{port}", paths=["/metrics", "/healthz", "/readyz"]
        )

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            try:
                reply = await self._answer(head)
            except Exception as exc:
                log.exception("http_request_failed", error_type=type(exc).__name__)
                reply = _text(
                    HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; see the driver log"
                )
            writer.write(reply.encode())
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that sends no complete request gets no answer
        except ConnectionError:
            pass  # the client left
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, head: bytes) -> Reply:
        method, _, rest = head.partition(b"\r\n")[0].decode("latin-1").partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        if method != "GET":
            return _text(HTTPStatus.METHOD_NOT_ALLOWED, "only GET is served")
        if path == "/metrics":
            return await self._render_metrics()
        if path == "/healthz":
            return self._healthz()
        if path == "/readyz":
            return await self._readyz()
        return _text(HTTPStatus.NOT_FOUND, "not found: try /metrics, /healthz or /readyz")

    async def _render_metrics(self) -> Reply:
        return Reply(HTTPStatus.OK, await self._metrics_text(), CONTENT_TYPE)

    def _healthz(self) -> Reply:
        lag = self._lag.current()
        if lag > self.max_lag:
            return _text(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"event loop lag {lag:.3f} s is over {self.max_lag:.3f} s",
            )
        return _text(HTTPStatus.OK, "ok")

    async def _readyz(self) -> Reply:
        report = await self._health.check()
        if not report.ready:
            return _text(HTTPStatus.SERVICE_UNAVAILABLE, "\n".join(report.problems))
        return _text(HTTPStatus.OK, "ok")
