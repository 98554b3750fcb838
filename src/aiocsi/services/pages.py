"""List replies encoded a slice at a time, so that no reply holds the loop for long.

betterproto2 encodes a ListVolumes entry in about 50 us of pure Python: a 100-entry page
in one `bytes(reply)` held the loop ~5 ms on this machine. A reply whose only set field
is the repeated `entries` encodes as the concatenation of its entries' encodings, so the
reply is encoded here as slices of `SLICE` entries with a yield to the loop between them,
then the rest of the reply (field numbers above `entries`, in order). The reply object
stays whole; the bytes ride along with it and the server's codec sends them instead of
encoding it again (`encoded_ahead`). A reply built once and sent many times (Probe's) is
encoded once the same way (`encoded_once`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import betterproto2

# About 1 ms of encoding per slice here.
SLICE = 20
# Where the bytes ride: a key of the message's __dict__, not one of its fields.
_ENCODED = "_aiocsi_encoded"

R = TypeVar("R", bound=betterproto2.Message)


async def paged_reply(reply_type: Callable[..., R], entries: Sequence[Any], next_token: str) -> R:
    """`reply_type(entries=entries, next_token=next_token)`, encoded ahead in slices."""
    chunks: list[bytes] = []
    for start in range(0, len(entries), SLICE):
        if start:
            await anyio.lowlevel.checkpoint()
        chunks.append(bytes(reply_type(entries=entries[start : start + SLICE])))
    chunks.append(bytes(reply_type(next_token=next_token)))
    reply = reply_type(entries=list(entries), next_token=next_token)
    reply.__dict__[_ENCODED] = b"".join(chunks)
    return reply


def encoded_once(message: R) -> R:
    """`message`, encoded now for every time it is sent: for a reply built once, at start."""
    message.__dict__[_ENCODED] = bytes(message)
    return message


def encoded_ahead(message: object) -> bytes | None:
    """The bytes `paged_reply` made for `message`; None for any other message."""
    found = getattr(message, "__dict__", {}).get(_ENCODED)
    return found if isinstance(found, bytes) else None
