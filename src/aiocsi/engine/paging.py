"""Paging of ListVolumes and ListSnapshots: tokens are sequence numbers."""

from __future__ import annotations

from aiocsi.errors import InvalidToken
from aiocsi.state.store import Store


async def check_page_token(store: Store, table: str, after_seq: int) -> None:
    """A token past every sequence number ever issued is not one this driver gave out."""
    if after_seq and after_seq > await store.last_seq(table):
        raise InvalidToken(f"starting_token {after_seq} is not one this driver issued")
