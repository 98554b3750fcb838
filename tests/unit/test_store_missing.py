"""What each store method does with a row that is not there, as its docstring says."""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import TYPE_CHECKING

import pytest

from aiocsi.models import PublicationKind, Snapshot, Volume, VolumeState
from aiocsi.state.store import DB_NAME, Store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

VOLUME = Volume(id="vol-1", name="pvc-1", capacity_bytes=1024, state=VolumeState.READY, node_id="n")
SNAPSHOT = Snapshot(
    id="snap-1",
    name="snapshot-1",
    source_volume_id="vol-1",
    size_bytes=1024,
    ready=True,
    created_at=1.0,
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(tmp_path / DB_NAME)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_look_ups_of_what_is_not_there_answer_none_or_nothing(store: Store) -> None:
    assert store.get_volume("nope") is None
    assert store.get_volume_by_name("nope") is None
    assert await store.get_snapshot("nope") is None
    assert await store.get_snapshot_by_name("nope") is None
    assert store.all_volumes() == []
    assert await store.all_snapshots() == []
    assert await store.list_volumes() == []
    assert await store.list_snapshots(source_volume_id="nope") == []
    assert store.publications("nope") == []
    assert await store.last_seq("volumes") == 0
    assert await store.provisioned_bytes() == 0
    with pytest.raises(ValueError, match="no sequence"):
        await store.last_seq("publications")


async def test_changes_and_removals_of_what_is_not_there_change_nothing(store: Store) -> None:
    volume = await store.insert_volume(VOLUME)
    snapshot = await store.insert_snapshot(SNAPSHOT)
    await store.set_volume_state("nope", VolumeState.DELETING)
    await store.set_volume_capacity("nope", 1 << 40, budget=1)
    await store.set_mutable_parameters("nope", {"k": "v"})
    await store.delete_volume("nope")
    await store.set_snapshot_ready("nope", ready=False)
    await store.delete_snapshot("nope")
    await store.remove_publication("nope", PublicationKind.STAGE, "/nope")
    assert store.all_volumes() == [volume] == await store.list_volumes()
    assert await store.all_snapshots() == [snapshot]
    assert await store.provisioned_bytes() == 2048


async def test_inserting_what_is_there_raises_and_records_nothing(store: Store) -> None:
    volume = await store.insert_volume(VOLUME)
    with pytest.raises(sqlite3.IntegrityError):
        await store.insert_volume(VOLUME)
    with pytest.raises(sqlite3.IntegrityError):
        await store.insert_volume(dataclasses.replace(VOLUME, id="vol-2"))
    await store.insert_snapshot(SNAPSHOT)
    with pytest.raises(sqlite3.IntegrityError):
        await store.insert_snapshot(SNAPSHOT)
    assert store.all_volumes() == [volume] == await store.list_volumes()
    assert len(await store.all_snapshots()) == 1
