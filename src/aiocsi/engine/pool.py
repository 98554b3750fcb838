"""The pool's layout on disk. Ids are validated before they ever become a path."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from aiocsi.models import GROUP_ID_RE, SNAPSHOT_ID_RE, VOLUME_ID_RE


def new_volume_id() -> str:
    return f"vol-{secrets.token_hex(16)}"


def new_snapshot_id() -> str:
    return f"snap-{secrets.token_hex(16)}"


def new_group_snapshot_id() -> str:
    return f"group-{secrets.token_hex(16)}"


def is_group_snapshot_id(value: str) -> bool:
    return GROUP_ID_RE.fullmatch(value) is not None


def is_volume_id(value: str) -> bool:
    return VOLUME_ID_RE.fullmatch(value) is not None


def is_snapshot_id(value: str) -> bool:
    return SNAPSHOT_ID_RE.fullmatch(value) is not None


@dataclass(frozen=True)
class Pool:
    root: Path

    @property
    def volumes_dir(self) -> Path:
        return self.root / "volumes"

    @property
    def snapshots_dir(self) -> Path:
        return self.root / "snapshots"

    @property
    def staging_dir(self) -> Path:
        """Where ephemeral inline volumes are staged (kubelet gives them no staging path)."""
        return self.root / "staging"

    def prepare(self) -> None:
        """Create the layout and resolve the root (blocking: call from a thread)."""
        for directory in (self.root, self.volumes_dir, self.snapshots_dir, self.staging_dir):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _ = self.real_image_dirs

    @cached_property
    def real_image_dirs(self) -> tuple[Path, Path]:
        """The volume and snapshot directories with every symlink resolved.

        Resolved once, by `prepare`: resolving walks the filesystem, which must not happen
        on the event loop.
        """
        return self.volumes_dir.resolve(), self.snapshots_dir.resolve()

    def volume_image(self, volume_id: str) -> Path:
        if not is_volume_id(volume_id):
            raise ValueError(f"not a volume id: {volume_id!r}")
        # Canonical: loop look-ups compare it with sysfs as a string, without resolving.
        return self.real_image_dirs[0] / f"{volume_id}.img"

    def snapshot_image(self, snapshot_id: str) -> Path:
        if not is_snapshot_id(snapshot_id):
            raise ValueError(f"not a snapshot id: {snapshot_id!r}")
        return self.real_image_dirs[1] / f"{snapshot_id}.img"

    def ephemeral_staging(self, volume_id: str) -> Path:
        if not is_volume_id(volume_id):
            raise ValueError(f"not a volume id: {volume_id!r}")
        return self.staging_dir / volume_id

    def owns_image(self, backing_file: str) -> bool:
        """True when a loop device's backing file is one of this pool's images.

        sysfs shows the resolved path an image was attached by, so the comparison is with the
        resolved directories: a pool reached through a symlink still owns its images.
        """
        path = Path(os.path.normpath(backing_file))
        return path.parent in self.real_image_dirs and path.suffix == ".img"
