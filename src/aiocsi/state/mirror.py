"""The in-memory copy of the hot tables: volumes and publications.

Updated only from a write's `then` callback, on the event loop, once the write is
durable: it never holds what the database does not.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from aiocsi.state import sql
from aiocsi.state.rows import PubKey, publication_from_row, volume_from_row

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable

    from aiocsi.models import Publication, PublicationKind, Volume


class Mirror:
    def __init__(self) -> None:
        self._volumes: dict[str, Volume] = {}
        self._volume_ids: dict[str, str] = {}  # name -> id
        # In insertion order, like rowid; and per volume, as most look-ups ask.
        self._publications: dict[PubKey, Publication] = {}
        self._by_volume: dict[str, dict[PubKey, Publication]] = {}
        # By path, and by every directory above a path: the publications at, above or
        # beneath one path, found without a scan (a stage or publish asks, each time).
        self._at_path: dict[str, dict[PubKey, Publication]] = {}
        self._beneath: dict[str, dict[PubKey, Publication]] = {}

    def load(self, db: sqlite3.Connection) -> None:
        """Fill from the database (in the store thread, before anything reads the mirror)."""
        for row in db.execute(sql.ALL_VOLUMES):
            self.remember(volume_from_row(row))
        for row in db.execute(sql.ALL_PUBLICATIONS):
            self.add_publication(publication_from_row(row))

    # -- volumes --------------------------------------------------------------------------

    def volume(self, volume_id: str) -> Volume | None:
        return self._volumes.get(volume_id)

    def volume_named(self, name: str) -> Volume | None:
        volume_id = self._volume_ids.get(name)
        return None if volume_id is None else self._volumes.get(volume_id)

    def volumes(self) -> list[Volume]:
        return sorted(self._volumes.values(), key=lambda v: v.seq)

    def remember(self, volume: Volume) -> Volume:
        self._volumes[volume.id] = volume
        self._volume_ids[volume.name] = volume.id
        return volume

    def change(self, volume_id: str, change: Callable[[Volume], Volume]) -> None:
        """Replace a remembered volume by `change(volume)`; an unknown id changes nothing."""
        if (volume := self._volumes.get(volume_id)) is not None:
            self._volumes[volume_id] = change(volume)

    def forget(self, volume_id: str) -> None:
        if (volume := self._volumes.pop(volume_id, None)) is not None:
            self._volume_ids.pop(volume.name, None)

    # -- publications ---------------------------------------------------------------------

    def publications(
        self, volume_id: str | None = None, kind: PublicationKind | None = None
    ) -> list[Publication]:
        pubs = self._publications if volume_id is None else self._by_volume.get(volume_id, {})
        return [p for p in pubs.values() if kind is None or p.kind is kind]

    def publications_near(self, path: str) -> list[Publication]:
        """Publications at `path`, at a directory above it, or beneath it (paths compared
        as normalised POSIX paths)."""
        here = PurePosixPath(path)
        found = list(self._at_path.get(str(here), {}).values())
        for above in here.parents:
            found += self._at_path.get(str(above), {}).values()
        found += self._beneath.get(str(here), {}).values()
        return found

    def add_publication(self, p: Publication) -> None:
        # INSERT OR REPLACE gives the row a new rowid: it moves to the end.
        self.forget_publication(p.volume_id, p.kind, p.path)
        key = (p.volume_id, p.kind, p.path)
        self._publications[key] = p
        self._by_volume.setdefault(p.volume_id, {})[key] = p
        here = PurePosixPath(p.path)
        self._at_path.setdefault(str(here), {})[key] = p
        for above in here.parents:
            self._beneath.setdefault(str(above), {})[key] = p

    def forget_publication(self, volume_id: str, kind: PublicationKind, path: str) -> None:
        key = (volume_id, kind, path)
        if self._publications.pop(key, None) is None:
            return
        _drop(self._by_volume, volume_id, key)
        here = PurePosixPath(path)
        _drop(self._at_path, str(here), key)
        for above in here.parents:
            _drop(self._beneath, str(above), key)


def _drop(index: dict[str, dict[PubKey, Publication]], where: str, key: PubKey) -> None:
    """Remove `key` from `index[where]`, and `where` once nothing is left there."""
    if (entries := index.get(where)) is not None:
        entries.pop(key, None)
        if not entries:
            del index[where]
