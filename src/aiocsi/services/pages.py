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

# Entry encodings a server keeps (`KeptEntries`): the 10,000 volumes and 10,000
# snapshots a node holds at the scale the project is measured at, and room to spare.
KEPT_ENTRIES = 50_000

R = TypeVar("R", bound=betterproto2.Message)


class KeptEntries:
    """List replies, and their entries kept encoded by the key of what each was built
    from: a health monitor's poll walks thousands of entries that have not changed since
    its last one.

    ~150 bytes an entry; emptied when full (a walk of more entries than it holds encodes
    them all again). Keys are tuples of plain values (strings, numbers), which the garbage
    collector stops tracking, so what is kept adds nothing to its passes.
    """

    def __init__(self, size: int = KEPT_ENTRIES) -> None:
        self._size = size
        self._encoded: dict[tuple[str, Hashable], bytes] = {}

    def __len__(self) -> int:
        return len(self._encoded)

    async def reply(
        self,
        reply_type: Callable[..., R],
        entries: Sequence[Any],
        keys: Sequence[Hashable],
        next_token: str,
    ) -> R:
        """`reply_type(entries=entries, next_token=next_token)`, encoded ahead in slices;
        `keys` has one key per entry, equal only for entries built alike."""
        chunks: list[bytes] = []
        fresh = 0
        for entry, entry_key in zip(entries, keys, strict=True):
            key = (type(entry).__name__, entry_key)
            if (known := self._encoded.get(key)) is not None:
                chunks.append(known)
                continue
            if fresh and fresh % SLICE == 0:
                await anyio.lowlevel.checkpoint()
            fresh += 1
            encoded = bytes(reply_type(entries=[entry]))
            if len(self._encoded) >= self._size:
                self._encoded.clear()
            self._encoded[key] = encoded
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
    """The bytes `KeptEntries.reply` made for `message`; None for any other message."""
    found = getattr(message, "__dict__", {}).get(_ENCODED)
    return found if isinstance(found, bytes) else None
