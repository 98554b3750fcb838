"""The structlog pipeline: JSON lines on stdout, stdlib records routed into it, secrets redacted."""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from aiocsi.context import current_call, scrub

REDACTED = "***"
SECRET_KEYS = frozenset({"secrets"})
# Libraries whose debug output is every HTTP/2 header of every call: noise that costs time
# per request and would put any metadata value a client sends into the log.
QUIET_LIBRARIES = ("hpack", "h2")
# Lines a stalled reader may leave waiting before new ones are dropped: a few seconds of a
# busy driver's rpc lines, a few hundred KiB of memory.
MAX_BUFFERED_LINES = 1024
# Lines the writer thread joins into one write(2).
_WRITE_BATCH = 256
# Field values with nothing to redact in them.
_PLAIN: frozenset[type] = frozenset({int, float, bool, type(None)})


def _redact(value: object, secrets: frozenset[str]) -> object:
    if isinstance(value, Mapping):
        # Keys too: a secret value sent as a parameter name must not survive as one.
        return {
            _redact(k, secrets): (REDACTED if k in SECRET_KEYS else _redact(v, secrets))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(v, secrets) for v in value]
    if isinstance(value, str) and secrets:
        return scrub(value, secrets)
    return value


def redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Blank every field named `secrets`, at any depth, and every secret value of the call.

    Runs after exception formatting, so tracebacks are scrubbed too.
    """
    call = current_call()
    secrets = call.secret_values if call else frozenset()
    # Values are replaced, no key is added or removed: safe while iterating.
    for key, value in event_dict.items():
        if key in SECRET_KEYS:
            event_dict[key] = REDACTED
        elif type(value) in _PLAIN or (not secrets and type(value) is str):
            continue  # nothing in it to redact: most fields of most lines
        else:
            event_dict[key] = _redact(value, secrets)
    return event_dict


def add_call_fields(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """The current call's request_id, method and (once known) volume_id on every line.

    Read from the call itself, so the interceptor binds nothing per call.
    """
    call = current_call()
    if call is not None:
        event_dict.setdefault("request_id", call.request_id)
        event_dict.setdefault("method", call.method)
        if call.volume_id:
            event_dict.setdefault("volume_id", call.volume_id)
    return event_dict


class _OneEncoder:
    """`json.dumps` without building a new JSONEncoder for every line: the same output.

    The renderer passes the same options every time; the encoder holds no state between
    lines, so the writer thread and the loop may share it.
    """

    def __init__(self) -> None:
        self._encoder: json.JSONEncoder | None = None

    def __call__(self, obj: object, **options: Any) -> str:  # noqa: ANN401 - json.dumps options
        if self._encoder is None:
            self._encoder = json.JSONEncoder(**options)
        return self._encoder.encode(obj)


class _StdlibBridge(logging.Handler):
    """Sends stdlib records (grpclib, asyncio, ...) through the structlog pipeline."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            logger = structlog.get_logger(record.name)
            kwargs: MutableMapping[str, Any] = {"logger": record.name}
            if record.exc_info:
                kwargs["exc_info"] = record.exc_info
            logger.log(record.levelno, record.getMessage(), **kwargs)
        except Exception:  # noqa: BLE001 - a logging failure must never kill the caller
            self.handleError(record)


@dataclass(frozen=True)
class LogStatistics:
    buffered: int
    # Lines dropped since start because the buffer was full (or the reader gone).
    dropped: int


class LogStream:
    """Log lines written to a file descriptor by a writer thread, never by the caller.

    A reader that stops reading (a stuck log shipper, a paused terminal, a full journald)
    blocks whoever writes to its pipe: here that is the writer thread alone. Lines that
    arrive while the buffer is full are dropped and counted, and once a write goes through
    again one `log_dropped` line says how many were lost.
    """

    def __init__(self, fd: int, max_lines: int = MAX_BUFFERED_LINES) -> None:
        self._fd = fd
        self._max_lines = max_lines
        # str: a line; Event: a flush marker, set once everything before it is written;
        # None: stop.
        self._lines: queue.SimpleQueue[str | threading.Event | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._unreported = 0
        self._dropped = 0
        self._thread = threading.Thread(target=self._write_lines, name="aiocsi-log", daemon=True)
        self._thread.start()

    # structlog's logger interface: the rendered line, whatever the level.
    def msg(self, message: str) -> None:
        if (
            self._lines.qsize() >= self._max_lines
            and threading.current_thread() is not self._thread
        ):
            self._count_dropped(1)
            return
        self._lines.put(message + "\n")

    debug = info = warning = warn = error = critical = exception = fatal = log = msg

    def statistics(self) -> LogStatistics:
        return LogStatistics(self._lines.qsize(), self._dropped)

    def flush(self, timeout: float) -> bool:
        """Wait until every line logged so far is written; False if `timeout` ran out."""
        written = threading.Event()
        self._lines.put(written)
        return written.wait(timeout)

    def close(self, timeout: float) -> bool:
        """Write what is buffered (for at most `timeout` seconds) and stop the thread."""
        flushed = self.flush(timeout)
        self._lines.put(None)
        self._thread.join(timeout=0.1 if flushed else 0)
        return flushed

    def _count_dropped(self, count: int) -> None:
        with self._lock:
            self._unreported += count
            self._dropped += count

    def _write_lines(self) -> None:
        while (item := self._lines.get()) is not None:
            batch, stop = [item], False
            while len(batch) < _WRITE_BATCH:
                try:
                    item = self._lines.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            lines = [line for line in batch if isinstance(line, str)]
            markers = [marker for marker in batch if isinstance(marker, threading.Event)]
            self._write("".join(lines).encode(errors="replace"), len(lines))
            for marker in markers:
                marker.set()
            if stop:
                return

    def _write(self, data: bytes, lines: int) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            # The reader is gone (EPIPE) or the descriptor broken: nobody reads these lines.
            self._count_dropped(lines)
            return
        with self._lock:
            lost, self._unreported = self._unreported, 0
        if lost:
            # Back in the buffer through the pipeline, so it is rendered like any line.
            get_logger("aiocsi.logging").warning("log_dropped", count=lost)


def configure(
    log_format: str = "json",
    level: str = "info",
    stream: TextIO | None = None,
    *,
    cache: bool = False,
    buffered: LogStream | None = None,
) -> None:
    """Configure structlog and the stdlib root logger once, at start.

    With `buffered`, lines go through that stream's writer thread (`aiocsi serve`);
    otherwise they are written to `stream` (default stdout) by the caller.

    With `cache`, each logger is built once, at its first use, instead of at every log
    call: right for a server that configures logging once; wrong for a test process that
    reconfigures it (or captures logs) after loggers have been used.
    """
    level_no = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_call_fields,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if log_format == "console":
        # Tracebacks are rendered to text before redaction in both formats: the console
        # renderer's own (rich) tracebacks would show local variables after it, secrets too.
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_OneEncoder())
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redact_secrets, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=(
            (lambda *_: buffered)
            if buffered is not None
            else structlog.WriteLoggerFactory(file=stream or sys.stdout)
        ),
        cache_logger_on_first_use=cache,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StdlibBridge):
            root.removeHandler(handler)
    root.addHandler(_StdlibBridge())
    root.setLevel(level_no)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(level_no, logging.INFO))
    logging.captureWarnings(capture=True)


def get_logger(name: str = "aiocsi") -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
