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

from aiocsi import threads
from aiocsi.engine.context import EngineContext
from aiocsi.engine.pool import is_volume_id
from aiocsi.host import files, fs, loop, mount
from aiocsi.models import Publication, PublicationKind, Volume


@dataclass(frozen=True)
class MountSeen:
    """What the mount table shows at a path."""

    mounted: bool
    volume_id: str | None = None  # set when the visible mount is one of this pool's volumes
    source: str = ""


async def publication_at(
    ctx: EngineContext, path: str, kind: PublicationKind = PublicationKind.PUBLISH
) -> Publication | None:
    for pub in await ctx.store.publications(kind=kind):
        if pub.path == path:
            return pub
    return None


async def stages(ctx: EngineContext) -> list[Publication]:
    return await ctx.store.publications(kind=PublicationKind.STAGE)


async def is_published(ctx: EngineContext, volume_id: str) -> bool:
    """Whether a pod (a publication) uses the volume on this node."""
    return bool(await ctx.store.publications(volume_id, PublicationKind.PUBLISH))


async def volume_named(ctx: EngineContext, name: str) -> Volume | None:
    return await ctx.store.get_volume_by_name(name)


def _volume_of_device(ctx: EngineContext, device: str) -> str | None:
    backing = loop.backing_file(device) if device.startswith("/dev/loop") else None
    if backing is None:
        return None
    image = loop.attached_path(backing)
    stem = Path(image).stem
    return stem if ctx.pool.owns_image(image) and is_volume_id(stem) else None


async def mount_at(ctx: EngineContext, path: str) -> MountSeen:
    real = await mount.canonical(Path(path))
    entries = mount.mounts_at_point(real)
    if not entries:
        return MountSeen(mounted=False)
    top = entries[-1]
    return MountSeen(mounted=True, volume_id=_volume_of_device(ctx, top.source), source=top.source)


async def filesystem_bytes(path: str) -> int:
    """The size the filesystem mounted at `path` spans, from its superblock (statfs leaves
    out the filesystem's own metadata, so it never shows the size a grow reached)."""
    real = await mount.canonical(Path(path))
    entries = mount.mounts_at_point(real)
    if not entries:
        raise FileNotFoundError(f"{path} is not mounted")
    top = entries[-1]
    return await threads.run_sync(fs.filesystem_bytes_sync, top.source, top.fs_type, real)


async def remove_empty_dir(path: str) -> None:
    """Remove a directory a stage left behind once it is empty; gone or in use is fine."""
    with contextlib.suppress(OSError):
        await threads.run_sync(files.remove_empty_sync, Path(path))
