"""The Flexvolume socket: one JSON request line in, one JSON reply line out.

A request is `{"op": "mount", "args": ["<dir>", "<options json>"]}`; the reply is the
Flexvolume status object the executable prints. The socket follows the CSI socket's rules
(server/socket.py: a stale socket is replaced, a live one never taken over), mode 0600:
only root (the kubelet) may ask. Every op writes one `flexvolume` log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path

import structlog

from aiocsi.context import CallContext, call_scope, scrub
from aiocsi.errors import DomainError, grpc_code_name
from aiocsi.flexvolume import options as opts
from aiocsi.flexvolume.frontend import FAILURE, FlexvolumeFrontEnd, Outcome, Reply
from aiocsi.logging import get_logger
from aiocsi.server.socket import BoundSocket, bind_unix_socket
from aiocsi.server.tracker import CallTracker
from aiocsi.threads import WorkerPool

SOCKET_MODE = 0o600
MAX_REQUEST_BYTES = 256 * 1024
# Which argument of an op is the pod's volume dir: it goes into the log line.
_DIR_ARG = {"mount": 0, "unmount": 0, "expandfs": 2}
_MAX_OP_CHARS = 32

log = get_logger("aiocsi.flexvolume")


def _failure(message: str) -> Reply:
    return {"status": FAILURE, "message": message}


def _request(line: bytes) -> tuple[str, list[str]]:
    try:
        request = json.loads(line)
    except ValueError:
        raise ValueError("the request is not one JSON line") from None
    if not isinstance(request, dict):
        raise ValueError("the request must be a JSON object")  # noqa: TRY004 - one error kind
    op, args = request.get("op"), request.get("args", [])
    if not isinstance(op, str) or not op:
        raise ValueError("the request names no op")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValueError("the request's args must be a list of strings")
    return op[:_MAX_OP_CHARS], args


def _secret_values(args: list[str]) -> frozenset[str]:
    """Secret values a client sent after all (the executable drops them): scrubbed."""
    found: set[str] = set()
    for arg in args:
        if arg.startswith("{"):
            with contextlib.suppress(ValueError):
                parsed = json.loads(arg)
                if isinstance(parsed, dict):
                    found |= opts.secret_values(parsed)
    return frozenset(found)


class FlexvolumeServer:
    def __init__(
        self,
        socket_path: Path,
        frontend: FlexvolumeFrontEnd,
        tracker: CallTracker,
        workers: WorkerPool,
    ) -> None:
        self.socket_path = socket_path
        self._workers = workers
        self._frontend = frontend
        self._tracker = tracker
        self._bound: BoundSocket | None = None
        self._server: asyncio.AbstractServer | None = None

    async def bind(self) -> None:
        """Take the socket (raises SocketError); requests are served after `start`."""
        self._bound = await self._workers.run_sync(bind_unix_socket, self.socket_path, SOCKET_MODE)

    async def start(self) -> None:
        assert self._bound is not None  # noqa: S101 - bind() comes first
        self._server = await asyncio.start_unix_server(
            self._serve, sock=self._bound.sock, limit=MAX_REQUEST_BYTES
        )

    def remove_socket(self) -> None:
        if self._bound is not None:
            self._bound.remove()

    async def close(self) -> None:
        self.remove_socket()
        if self._server is not None:
            self._server.close()
        elif self._bound is not None:
            self._bound.sock.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                reply = _failure(f"the request is larger than {MAX_REQUEST_BYTES} bytes")
            except asyncio.IncompleteReadError:
                return  # the client went away before it asked anything
            else:
                reply = await self.answer(line)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except ConnectionError:
            pass  # the executable is gone (killed): the operation itself has finished
        finally:
            writer.close()

    async def answer(self, line: bytes) -> Reply:
        """The reply to one request line; logs one `flexvolume` line."""
        started = time.perf_counter()
        try:
            op, args = _request(line)
        except ValueError as exc:
            log.warning("flexvolume_bad_request", error=str(exc))
            return _failure(str(exc))
        call = CallContext(
            request_id=os.urandom(8).hex(), method=op, secret_values=_secret_values(args)
        )
        outcome = Outcome()
        with call_scope(call), structlog.contextvars.bound_contextvars(request_id=call.request_id):
            reply = await self._call(op, args, outcome)
            self._log(op, args, outcome, reply, started)
        return reply

    async def _call(self, op: str, args: list[str], outcome: Outcome) -> Reply:
        self._tracker.enter()
        try:
            if self._tracker.draining:
                return _failure("the aiocsi driver is shutting down; the kubelet will retry")
            return await self._frontend.call(op, args, outcome)
        except DomainError as exc:
            return _failure(f"{scrub(str(exc))} ({grpc_code_name(exc)})")
        except Exception as exc:
            log.exception("unexpected_error", error_type=type(exc).__name__)
            return _failure(f"internal error ({type(exc).__name__}); see the aiocsi driver log")
        finally:
            self._tracker.leave()

    @staticmethod
    def _log(op: str, args: list[str], outcome: Outcome, reply: Reply, started: float) -> None:
        index = _DIR_ARG.get(op)
        log.info(
            "flexvolume",
            op=op,
            volume=outcome.volume,
            result=reply["status"],
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            **({"dir": args[index]} if index is not None and index < len(args) else {}),
            **({"error": reply["message"]} if reply["status"] == FAILURE else {}),
        )
