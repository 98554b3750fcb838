"""10,000 volumes and 10,000 snapshots: every listing is served in pages that stay small.

Pins the page-size decision of engine/paging.py (docs/parameters.md says why): a call
without `max_entries` gets PAGE_SIZE entries and a token, one asking for more than
MAX_PAGE_SIZE gets MAX_PAGE_SIZE, and following the tokens yields every entry once, in
order. The walks run under the suite's loop watchdog (driver and client share the loop).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from aiocsi._proto.csi import v1 as csi
from aiocsi.engine.paging import MAX_PAGE_SIZE, PAGE_SIZE

from .conftest import driver_config, unwatched_driver, watched_loop
from .seed import seed_pool

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

pytestmark = pytest.mark.system

VOLUMES = 10_000
SNAPSHOTS = 10_000
# A page of 100 entries encodes to ~10 KiB; a reply of all 10,000 would be ~1 MB.
PAGE_BYTES_AT_MOST = 64 * 1024


async def _walk(call: Callable[[str], Awaitable[tuple[list[str], str, int]]]) -> list[list[str]]:
    """Every page from the first, following next_token: each page's ids."""
    pages: list[list[str]] = []
    token = ""
    while True:
        ids, token, size = await call(token)
        assert len(ids) <= PAGE_SIZE
        assert size <= PAGE_BYTES_AT_MOST
        pages.append(ids)
        if not token:
            return pages


async def test_ten_thousand_entries_come_in_small_pages(cleanup: Path) -> None:
    config = driver_config(cleanup)
    volumes, snapshots = await seed_pool(config.pool, config.node_id, VOLUMES, SNAPSHOTS)
    async with unwatched_driver(config, cleanup) as driver:

        async def volume_page(token: str) -> tuple[list[str], str, int]:
            reply = await driver.client.controller.list_volumes(
                csi.ListVolumesRequest(starting_token=token)
            )
            ids = [e.volume.volume_id for e in reply.entries if e.volume is not None]
            return ids, reply.next_token, len(bytes(reply))

        async def snapshot_page(token: str) -> tuple[list[str], str, int]:
            reply = await driver.client.controller.list_snapshots(
                csi.ListSnapshotsRequest(starting_token=token)
            )
            ids = [e.snapshot.snapshot_id for e in reply.entries if e.snapshot is not None]
            return ids, reply.next_token, len(bytes(reply))

        async with watched_loop() as watchdog:
            volume_pages = await _walk(volume_page)
            snapshot_pages = await _walk(snapshot_page)
        watchdog.check()
        # Not watched: this process's own client decodes 1,000 entries in one go.

        wide = await driver.client.controller.list_volumes(
            csi.ListVolumesRequest(max_entries=VOLUMES)
        )
        narrow = await driver.client.controller.list_snapshots(
            csi.ListSnapshotsRequest(max_entries=7)
        )

    assert [len(p) for p in volume_pages] == [PAGE_SIZE] * (VOLUMES // PAGE_SIZE)
    assert [i for p in volume_pages for i in p] == [v.id for v in volumes]
    assert [len(p) for p in snapshot_pages] == [PAGE_SIZE] * (SNAPSHOTS // PAGE_SIZE)
    assert [i for p in snapshot_pages for i in p] == [s.id for s in snapshots]
    # A caller's max_entries above the cap gets the cap, and a token to the rest.
    assert len(wide.entries) == MAX_PAGE_SIZE
    assert wide.next_token
    assert [e.snapshot.snapshot_id for e in narrow.entries if e.snapshot] == [
        s.id for s in snapshots[:7]
    ]
    assert narrow.next_token
