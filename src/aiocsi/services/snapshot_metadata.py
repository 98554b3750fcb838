"""SnapshotMetadata service: allocated and changed extents of snapshots, streamed."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

from aiocsi._proto.csi import v1 as csi
from aiocsi.engine.core import Engine
from aiocsi.engine.metadata import MetadataPage
from aiocsi.services.validation import metadata as check

EXTENT_TYPE = csi.BlockMetadataType.VARIABLE_LENGTH
Reply = TypeVar("Reply", csi.GetMetadataAllocatedResponse, csi.GetMetadataDeltaResponse)


async def _replies(
    pages: AsyncGenerator[MetadataPage], reply: type[Reply]
) -> AsyncGenerator[Reply]:
    # Closed here, not by the garbage collector: the stream's images close when it ends.
    async with contextlib.aclosing(pages):
        async for page in pages:
            yield reply(
                block_metadata_type=EXTENT_TYPE,
                volume_capacity_bytes=page.capacity_bytes,
                block_metadata=[
                    csi.BlockMetadata(byte_offset=start, size_bytes=size)
                    for start, size in page.extents
                ],
            )


class SnapshotMetadataService(csi.SnapshotMetadataBase):
    def __init__(self, engine: Engine) -> None:
        self._metadata = engine.metadata

    async def get_metadata_allocated(
        self, message: csi.GetMetadataAllocatedRequest
    ) -> AsyncIterator[csi.GetMetadataAllocatedResponse]:
        snapshot_id, window = check.allocated(message)
        pages = self._metadata.allocated(snapshot_id, window.starting_offset, window.max_results)
        replies = _replies(pages, csi.GetMetadataAllocatedResponse)
        async with contextlib.aclosing(replies):
            async for reply in replies:
                yield reply

    async def get_metadata_delta(
        self, message: csi.GetMetadataDeltaRequest
    ) -> AsyncIterator[csi.GetMetadataDeltaResponse]:
        base, target, window = check.delta(message)
        pages = self._metadata.delta(base, target, window.starting_offset, window.max_results)
        replies = _replies(pages, csi.GetMetadataDeltaResponse)
        async with contextlib.aclosing(replies):
            async for reply in replies:
                yield reply
