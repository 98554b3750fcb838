"""Read-only questions for a front end that names volumes by path (Flexvolume's `unmount
<dir>` and `expandfs`): which volume is published or mounted at a path, and how large the
filesystem mounted there is.

Answered from durable state first (the publications table survives a driver crash and a
kubelet restart), then from the mount table (a mount made by a call that died before it
was recorded).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from aiocsi.engine.pool import is_volume_id
from aiocsi.engine.resources import EngineResources
from aiocsi.host import files, fs, mount, sysfs
from aiocsi.models import Publication, PublicationKind, Volume


@dataclass(frozen=True)
class MountSeen:
    """What the mount table shows at a path."""

    mounted: bool
    volume_id: str | None = None  # set when the visible mount is one of this pool's volumes
    source: str = ""


def publication_at(
    ctx: EngineResources, path: str, kind: PublicationKind = PublicationKind.PUBLISH
) -> Publication | None:
    for pub in ctx.store.publications(kind=kind):
        if pub.path == path:
            return pub
    return None


def stages(ctx: EngineResources) -> list[Publication]:
    return ctx.store.publications(kind=PublicationKind.STAGE)


def is_published(ctx: EngineResources, volume_id: str) -> bool:
    """Whether a pod (a publication) uses the volume on this node."""
    return bool(ctx.store.publications(volume_id, PublicationKind.PUBLISH))


def volume_named(ctx: EngineResources, name: str) -> Volume | None:
    return ctx.store.get_volume_by_name(name)


def _volume_of_device(ctx: EngineResources, device: str) -> str | None:
    backing = sysfs.backing_file(device) if device.startswith("/dev/loop") else None
    if backing is None:
        return None
    image = sysfs.attached_path(backing)
    stem = Path(image).stem
    return stem if ctx.pool.owns_image(image) and is_volume_id(stem) else None


async def mount_at(ctx: EngineResources, path: str) -> MountSeen:
    real = await mount.canonical(ctx.workers, Path(path))
    entries = mount.mounts_at_point(real)
    if not entries:
        return MountSeen(mounted=False)
    top = entries[-1]
    return MountSeen(mounted=True, volume_id=_volume_of_device(ctx, top.source), source=top.source)


async def filesystem_bytes(ctx: EngineResources, path: str) -> int:
    """The size the filesystem mounted at `path` spans, from its superblock (statfs leaves
    out the filesystem's own metadata, so it never shows the size a grow reached)."""
    real = await mount.canonical(ctx.workers, Path(path))
    entries = mount.mounts_at_point(real)
    if not entries:
        raise FileNotFoundError(f"{path} is not mounted")
    top = entries[-1]
    return await ctx.workers.run_sync(fs.filesystem_bytes_sync, top.source, top.fs_type, real)


async def remove_empty_dir(ctx: EngineResources, path: str) -> None:
    """Remove a directory a stage left behind once it is empty; gone or in use is fine."""
    with contextlib.suppress(OSError):
        await ctx.workers.run_sync(files.remove_empty_sync, Path(path))
