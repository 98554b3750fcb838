"""The structlog pipeline: JSON lines on stdout, stdlib records routed into it, secrets redacted."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from aiocsi.context import current_call, scrub

REDACTED = "***"
SECRET_KEYS = frozenset({"secrets"})
# Libraries whose debug output is every HTTP/2 header of every call: noise that costs time
# per request and would put any metadata value a client sends into the log.
QUIET_LIBRARIES = ("hpack", "h2")


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
    for key in list(event_dict):
        event_dict[key] = REDACTED if key in SECRET_KEYS else _redact(event_dict[key], secrets)
    return event_dict


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


def configure(
    log_format: str = "json",
    level: str = "info",
    stream: TextIO | None = None,
    *,
    cache: bool = False,
) -> None:
    """Configure structlog and the stdlib root logger once, at start.

    With `cache`, each logger is built once, at its first use, instead of at every log
    call: right for a server that configures logging once; wrong for a test process that
    reconfigures it (or captures logs) after loggers have been used.
    """
    level_no = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if log_format == "console":
        # Tracebacks are rendered to text before redaction in both formats: the console
        # renderer's own (rich) tracebacks would show local variables after it, secrets too.
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redact_secrets, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.WriteLoggerFactory(file=stream or sys.stdout),
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
