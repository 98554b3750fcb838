"""Controller-side volume work, one file per concern: lookups <- changes (expand, modify)
and attachments (controller publish) <- service (create, delete), whose `VolumeService`
is what the engine hands out."""

from __future__ import annotations

from aiocsi.engine.volumes.lookups import is_preallocated
from aiocsi.engine.volumes.service import VolumeService

__all__ = ["VolumeService", "is_preallocated"]
