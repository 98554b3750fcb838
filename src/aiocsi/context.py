"""Per-call context shared by the server layer (which sets it) and the engine (which reads it).

The server binds it in the handler's task, so every await inside a call sees its own values.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class CallContext:
    request_id: str
    method: str
    # Monotonic time (time.monotonic) at which the caller stops waiting; None = no deadline.
    deadline: float | None = None
    volume_id: str = ""
    # Values of every `secrets` map in the request: scrubbed from logs and error messages.
    secret_values: frozenset[str] = field(default_factory=frozenset)

    def time_left(self) -> float | None:
        if self.deadline is None:
            return None
        return self.deadline - time.monotonic()


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "aiocsi_call", default=None
)


def current_call() -> CallContext | None:
    return _current.get()


CallToken = contextvars.Token[CallContext | None]


def set_call(call: CallContext | None) -> CallToken:
    """Make `call` the current call (None: no call); `reset_call(token)` undoes it."""
    return _current.set(call)


def reset_call(token: CallToken) -> None:
    """Restore the call that was current before the `set_call` that returned `token`."""
    _current.reset(token)


@contextlib.contextmanager
def call_scope(call: CallContext | None) -> Iterator[CallContext | None]:
    """`call` is the current call inside the block, and the previous one again after it."""
    token = set_call(call)
    try:
        yield call
    finally:
        reset_call(token)


def _spellings(value: str) -> tuple[str, ...]:
    """The value as it is, and as a message quoting it with !r shows it (escapes and all)."""
    quoted = repr(value)[1:-1]
    return (value, quoted) if quoted != value else (value,)


def scrub(text: str, secrets: frozenset[str] | None = None) -> str:
    """Replace every secret value of the current call that occurs in `text`."""
    if secrets is None:
        call = _current.get()
        secrets = call.secret_values if call else frozenset()
    # Longest first: a secret that contains another must not be left half replaced.
    for value in sorted(secrets, key=len, reverse=True):
        for spelling in _spellings(value):
            if spelling:
                text = text.replace(spelling, "***")
    return text
