"""List replies encoded a slice at a time, so that no reply holds the loop for long.

betterproto2 encodes a ListVolumes entry in about 50 us of pure Python: a 100-entry page
in one `bytes(reply)` held the loop ~5 ms on this machine. A reply whose only set field
is the repeated `entries` encodes as the concatenation of its entries' encodings, so the
reply is encoded here as slices of `SLICE` entries with a yield to the loop between them,
then the rest of the reply (field numbers above `entries`, in order); an entry built from
what an earlier reply's entry was built from is sent as that entry's bytes. The reply object
stays whole; the bytes ride along with it and the server's codec sends them instead of
encoding it again (`encoded_ahead`). A reply built once and sent many times (Probe's) is
encoded once the same way (`encoded_once`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import betterproto2

# About 1 ms of encoding per slice here.
SLICE = 20
# Where the bytes ride: a key of the message's __dict__, not one of its fields.
_ENCODED = "_aiocsi_encoded"

R = TypeVar("R", bound=betterproto2.Message)


# Entries kept encoded, by the key of what each was built from: a health monitor's poll
# walks thousands of entries that have not changed since its last one. ~150 bytes an
# entry; emptied when full (a walk of more entries than this encodes them all again).
ENTRY_CACHE_SIZE = 50_000
# Keys are tuples of plain values (strings, numbers): such tuples the garbage collector
# stops tracking, so the cache adds nothing to its passes.
_encoded_entries: dict[tuple[str, Hashable], bytes] = {}


async def paged_reply(
    reply_type: Callable[..., R],
    entries: Sequence[Any],
    next_token: str,
    keys: Sequence[Hashable] | None = None,
) -> R:
    """`reply_type(entries=entries, next_token=next_token)`, encoded ahead in slices.

    With `keys` (one per entry: a tuple of plain values, equal only for entries built
    alike), an entry's encoding is kept under its key and reused by later replies.
    """
    chunks: list[bytes] = []
    fresh = 0
    for n, entry in enumerate(entries):
        key = (type(entry).__name__, keys[n]) if keys is not None else None
        if key is not None and (known := _encoded_entries.get(key)) is not None:
            chunks.append(known)
            continue
        if fresh and fresh % SLICE == 0:
            await anyio.lowlevel.checkpoint()
        fresh += 1
        encoded = bytes(reply_type(entries=[entry]))
        if key is not None:
            if len(_encoded_entries) >= ENTRY_CACHE_SIZE:
                _encoded_entries.clear()
            _encoded_entries[key] = encoded
        chunks.append(encoded)
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
