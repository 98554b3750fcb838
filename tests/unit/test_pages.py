"""Replies encoded ahead in slices: the same bytes as one encoding, and the loop gets turns."""

from __future__ import annotations

import asyncio
import dataclasses
import gc

from aiocsi._proto.csi import v1 as csi
from aiocsi.models import ContentSource, Snapshot, SourceKind, Volume, VolumeCondition, VolumeState
from aiocsi.services import convert
from aiocsi.services.pages import SLICE, KeptEntries, encoded_ahead, encoded_once


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
        reply = await KeptEntries().reply(csi.ListSnapshotsResponse, _entries(n), range(n), token)
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
    await KeptEntries().reply(csi.ListSnapshotsResponse, _entries(SLICE * 5), range(SLICE * 5), "")
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


async def test_an_entry_is_encoded_once_per_key() -> None:
    first = _entries(3)
    keys = [("same", i) for i in range(3)]
    kept = KeptEntries()
    await kept.reply(csi.ListSnapshotsResponse, first, keys, "")
    assert len(kept) == 3
    # Built alike means the same key: the kept bytes are sent, whatever the entry holds.
    changed = _entries(3)
    changed[0].snapshot.size_bytes = 999  # type: ignore[union-attr]
    again = await kept.reply(csi.ListSnapshotsResponse, changed, keys, "")
    assert encoded_ahead(again) == bytes(csi.ListSnapshotsResponse(entries=first))
    other_keys = [("other", i) for i in range(3)]
    other = await kept.reply(csi.ListSnapshotsResponse, changed, other_keys, "")
    assert encoded_ahead(other) == bytes(csi.ListSnapshotsResponse(entries=changed))


def _volume(**changes: object) -> Volume:
    base = Volume(
        id="vol-1", name="pvc-1", capacity_bytes=1 << 20, state=VolumeState.READY, node_id="n"
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_entry_keys_change_with_what_the_entry_shows_and_stay_untracked() -> None:
    healthy, broken = VolumeCondition.healthy(), VolumeCondition(abnormal=True, message="x")
    key = convert.volume_entry_key(_volume(), ["n"], healthy)
    others = [
        convert.volume_entry_key(_volume(id="vol-2"), ["n"], healthy),
        convert.volume_entry_key(_volume(capacity_bytes=2 << 20), ["n"], healthy),
        convert.volume_entry_key(_volume(node_id="m"), ["n"], healthy),
        convert.volume_entry_key(
            _volume(source=ContentSource(SourceKind.SNAPSHOT, "snap-1")), ["n"], healthy
        ),
        convert.volume_entry_key(
            _volume(source=ContentSource(SourceKind.VOLUME, "snap-1")), ["n"], healthy
        ),
        convert.volume_entry_key(_volume(), [], healthy),
        convert.volume_entry_key(_volume(), ["n"], broken),
    ]
    assert key not in others
    assert len(set(others)) == len(others)
    assert key == convert.volume_entry_key(_volume(name="renamed"), ["n"], healthy)
    snapshot = Snapshot("snap-1", "s", "vol-1", 1 << 20, ready=True, created_at=1.5)
    keys = [key, convert.snapshot_key(snapshot)]
    assert convert.snapshot_key(dataclasses.replace(snapshot, ready=False)) != keys[1]
    gc.collect()
    gc.collect()  # the outer tuple is untracked once its inner one is: a second pass
    assert not any(gc.is_tracked(k) for k in keys)


async def test_kept_entries_empty_when_full() -> None:
    kept = KeptEntries(size=2)
    entries = _entries(3)
    reply = await kept.reply(csi.ListSnapshotsResponse, entries, range(3), "")
    assert len(kept) == 1  # two kept, then emptied for the third
    assert encoded_ahead(reply) == bytes(csi.ListSnapshotsResponse(entries=entries))
