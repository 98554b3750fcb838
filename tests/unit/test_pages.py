"""Replies encoded ahead in slices: the same bytes as one encoding, and the loop gets turns."""

from __future__ import annotations

import asyncio

from aiocsi._proto.csi import v1 as csi
from aiocsi.services.pages import SLICE, encoded_ahead, encoded_once, paged_reply


def _entries(n: int) -> list[csi.ListSnapshotsResponseEntry]:
    return [
        csi.ListSnapshotsResponseEntry(
            snapshot=csi.Snapshot(
                size_bytes=i + 1, snapshot_id=f"snap-{i}", source_volume_id="vol-1"
            )
        )
        for i in range(n)
    ]


async def test_encoded_ahead_is_the_reply_s_own_encoding() -> None:
    for n, token in [(0, ""), (1, ""), (SLICE, "7"), (SLICE * 5 + 3, "123")]:
        reply = await paged_reply(csi.ListSnapshotsResponse, _entries(n), token)
        assert reply == csi.ListSnapshotsResponse(entries=_entries(n), next_token=token)
        assert encoded_ahead(reply) == bytes(reply)
        assert csi.ListSnapshotsResponse.parse(encoded_ahead(reply) or b"") == reply


async def test_each_slice_gives_the_loop_a_turn() -> None:
    turns = 0

    async def other() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    before = turns
    await paged_reply(csi.ListSnapshotsResponse, _entries(SLICE * 5), "")
    during = turns - before
    task.cancel()
    assert during >= 4


def test_a_message_not_encoded_ahead_has_no_bytes() -> None:
    assert encoded_ahead(csi.ListSnapshotsResponse()) is None
    assert encoded_ahead(object()) is None


def test_a_reply_encoded_once_carries_its_own_bytes() -> None:
    for ready in (True, False):
        reply = encoded_once(csi.ProbeResponse(ready=ready))
        assert encoded_ahead(reply) == bytes(csi.ProbeResponse(ready=ready))
