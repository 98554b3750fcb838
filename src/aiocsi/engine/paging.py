"""Paging of ListVolumes and ListSnapshots: tokens are sequence numbers.

A request without `max_entries` gets `PAGE_SIZE` entries and a `next_token`, and a
request asking for more than `MAX_PAGE_SIZE` gets that many: the spec lets the driver
return fewer entries than asked as long as `next_token` leads to the rest, and a page
of bounded size keeps each reply's cost (its build, its encoding, its condition checks)
bounded whatever the pool holds. docs/parameters.md says why these two numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from aiocsi.errors import InvalidToken
from aiocsi.state.store import Store

T = TypeVar("T", bound="Sequenced")

# The page a caller gets when it sets no `max_entries`.
PAGE_SIZE = 100
# The largest page any caller gets, whatever `max_entries` asks.
MAX_PAGE_SIZE = 1000


def page_limit(max_entries: int) -> int:
    """The number of entries one reply holds at most, for a request's `max_entries`
    (0: the caller sets no limit)."""
    if max_entries <= 0:
        return PAGE_SIZE
    return min(max_entries, MAX_PAGE_SIZE)


async def check_page_token(store: Store, table: str, after_seq: int) -> None:
    """A token past every sequence number ever issued is not one this driver gave out."""
    if after_seq and after_seq > await store.last_seq(table):
        raise InvalidToken(f"starting_token {after_seq} is not one this driver issued")


class Sequenced(Protocol):
    @property
    def seq(self) -> int: ...


@dataclasses.dataclass(frozen=True)
class Page(Generic[T]):
    """One reply's entries, in `seq` order, and the token of the next page ("": none)."""

    entries: list[T]
    next_token: str


async def read_page(
    store: Store,
    table: str,
    after_seq: int,
    limit: int,
    fetch: Callable[[int, int], Awaitable[list[T]]],
) -> Page[T]:
    """The page after `after_seq` of at most `limit` entries; `fetch(after, n)` reads up to
    n entries (one more than the page, to learn whether another follows)."""
    await check_page_token(store, table, after_seq)
    found = await fetch(after_seq, limit + 1)
    if len(found) <= limit:
        return Page(found, "")
    entries = found[:limit]
    return Page(entries, str(entries[-1].seq))
