"""Node-side volume work: loop devices, formats, mounts (docs/architecture.md).

Every step is an "ensure": it looks before it acts, so a retry after a timeout or a crash
continues where the last try stopped. A failed call undoes only what it did itself, and a
mount or loop device that is not this volume's is never touched.

The calls build on each other, one file each: base (shared look-ups and releases) <- stage
<- publish <- inline (ephemeral volumes) <- usage (stats, expand), whose `NodeVolumes` is
what the engine hands out.
"""

from __future__ import annotations

from aiocsi.engine.node.usage import NodeVolumes, VolumeStats

__all__ = ["NodeVolumes", "VolumeStats"]
