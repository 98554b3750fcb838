"""One volume lifecycle through the CSI client stubs (`aiocsi.client`), timed call by call.

Each lifecycle remembers what it may have made (a volume, a stage, a publish) before it
asks, and forgets it only when the driver has confirmed the undo, or refused the request
outright. Whatever remains is released in reverse order, the way a CO would retry.
"""

from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import anyio

from aiocsi._proto.csi import v1 as csi
from aiocsi.bench.config import Access, VolumeSpec
from aiocsi.bench.runner import Lifecycles, measure
from aiocsi.bench.workspace import WRITE_FILE, write_and_sync
from aiocsi.client.codes import DEFINITIVE, RETRYABLE, BadResponse, grpc_code
from aiocsi.client.requests import volume_capability

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from aiocsi.bench.stats import RunRecorder, Samples
    from aiocsi.bench.workspace import Workspace
    from aiocsi.client.stubs import CsiStubs

T = TypeVar("T")

CREATE, STAGE, PUBLISH, WRITE = "CreateVolume", "NodeStageVolume", "NodePublishVolume", "Write"
UNPUBLISH, UNSTAGE, DELETE = "NodeUnpublishVolume", "NodeUnstageVolume", "DeleteVolume"
PROBE = "Probe"
_RELEASE_TRIES = 10
_RELEASE_FIRST_DELAY_S = 0.1
_RELEASE_MAX_DELAY_S = 2.0


def capability(spec: VolumeSpec) -> csi.VolumeCapability:
    return volume_capability(block=spec.access is Access.BLOCK, fs_type=spec.fs_type)


class Held(enum.Enum):
    """What a lifecycle may hold on the driver; `held` is added before the request is sent."""

    VOLUME = "volume"
    STAGE = "stage"
    PUBLISH = "publish"


@dataclass
class CsiSlot:
    name: str
    staging: Path
    target: Path
    volume_id: str | None = None
    volume_context: dict[str, str] = field(default_factory=dict)
    held: set[Held] = field(default_factory=set)

    @property
    def known_id(self) -> str:
        if self.volume_id is None:
            raise RuntimeError(f"volume {self.name} has no id yet")
        return self.volume_id


async def _remove_dir(path: Path) -> None:
    """The CO's part: remove the staging directory it made (never through a mount)."""
    with contextlib.suppress(OSError):
        await anyio.Path(path).rmdir()


class CsiLifecycles(Lifecycles[CsiSlot]):
    kind = "driver"

    def __init__(
        self,
        stubs: CsiStubs,
        spec: VolumeSpec,
        workspace: Workspace,
        name_base: str,
        rpc_timeout: float,
    ) -> None:
        super().__init__()
        self._stubs = stubs
        self._spec = spec
        self._workspace = workspace
        self._name_base = name_base
        self._timeout = rpc_timeout
        self._capability = capability(spec)

    @property
    def steps(self) -> tuple[str, ...]:
        middle = (WRITE,) if self._spec.write_bytes else ()
        return (CREATE, STAGE, PUBLISH, *middle, UNPUBLISH, UNSTAGE, DELETE)

    def code_of(self, exc: BaseException) -> str:
        return grpc_code(exc)

    def describe(self, slot: CsiSlot) -> str:
        held = ",".join(sorted(h.value for h in slot.held))
        return f"volume {slot.name} (id {slot.volume_id or '?'}; may hold {held or 'nothing'})"

    def _new(self, seq: int) -> CsiSlot:
        return CsiSlot(
            f"{self._name_base}-{seq}", self._workspace.staging(seq), self._workspace.target(seq)
        )

    async def _steps(self, slot: CsiSlot, rec: RunRecorder) -> None:
        await self._create(slot, rec.op(CREATE))
        await anyio.Path(slot.staging).mkdir(exist_ok=True)
        await self._stage(slot, rec.op(STAGE))
        await self._publish(slot, rec.op(PUBLISH))
        if self._spec.write_bytes:
            await measure(rec.op(WRITE), lambda: self._write(slot), grpc_code)
        await self._unpublish(slot, rec.op(UNPUBLISH))
        await self._unstage(slot, rec.op(UNSTAGE))
        await self._delete(slot, rec.op(DELETE))

    async def _release(self, slot: CsiSlot, rec: RunRecorder) -> None:
        if Held.VOLUME in slot.held and slot.volume_id is None:
            # The create's outcome is unknown: the same request again is idempotent by name.
            await self._retrying(lambda: self._create(slot, rec.cleanup_op(CREATE)))
        if Held.PUBLISH in slot.held:
            await self._retrying(lambda: self._unpublish(slot, rec.cleanup_op(UNPUBLISH)))
        if Held.STAGE in slot.held:
            await self._retrying(lambda: self._unstage(slot, rec.cleanup_op(UNSTAGE)))
        if Held.VOLUME in slot.held:
            await self._retrying(lambda: self._delete(slot, rec.cleanup_op(DELETE)))
        await _remove_dir(slot.staging)

    async def _retrying(self, call: Callable[[], Awaitable[None]]) -> None:
        delay = _RELEASE_FIRST_DELAY_S
        for _ in range(_RELEASE_TRIES - 1):
            try:
                await call()
            except Exception as exc:
                if grpc_code(exc) not in RETRYABLE:
                    raise
            else:
                return
            await anyio.sleep(delay)
            delay = min(delay * 2, _RELEASE_MAX_DELAY_S)
        await call()

    async def _holding(
        self, slot: CsiSlot, what: Held, samples: Samples, call: Callable[[], Awaitable[T]]
    ) -> T:
        slot.held.add(what)
        try:
            return await measure(samples, call, grpc_code)
        except Exception as exc:
            if grpc_code(exc) in DEFINITIVE:
                slot.held.discard(what)
            raise

    async def _create(self, slot: CsiSlot, samples: Samples) -> None:
        size = self._spec.size
        request = csi.CreateVolumeRequest(
            name=slot.name,
            capacity_range=csi.CapacityRange(
                required_bytes=size, limit_bytes=size if self._spec.exact_size else 0
            ),
            volume_capabilities=[self._capability],
        )
        response = await self._holding(
            slot,
            Held.VOLUME,
            samples,
            lambda: self._stubs.controller.create_volume(request, timeout=self._timeout),
        )
        volume = response.volume
        if volume is None or not volume.volume_id:
            raise BadResponse(f"CreateVolume for {slot.name} returned no volume id")
        slot.volume_id = volume.volume_id
        slot.volume_context = dict(volume.volume_context)

    async def _stage(self, slot: CsiSlot, samples: Samples) -> None:
        request = csi.NodeStageVolumeRequest(
            volume_id=slot.known_id,
            staging_target_path=str(slot.staging),
            volume_capability=self._capability,
            volume_context=slot.volume_context,
        )
        await self._holding(
            slot,
            Held.STAGE,
            samples,
            lambda: self._stubs.node.node_stage_volume(request, timeout=self._timeout),
        )

    async def _publish(self, slot: CsiSlot, samples: Samples) -> None:
        request = csi.NodePublishVolumeRequest(
            volume_id=slot.known_id,
            staging_target_path=str(slot.staging),
            target_path=str(slot.target),
            volume_capability=self._capability,
            volume_context=slot.volume_context,
        )
        await self._holding(
            slot,
            Held.PUBLISH,
            samples,
            lambda: self._stubs.node.node_publish_volume(request, timeout=self._timeout),
        )

    async def _write(self, slot: CsiSlot) -> None:
        block = self._spec.access is Access.BLOCK
        path = slot.target if block else slot.target / WRITE_FILE
        await anyio.to_thread.run_sync(
            lambda: write_and_sync(path, self._spec.write_bytes, create=not block)
        )

    async def _unpublish(self, slot: CsiSlot, samples: Samples) -> None:
        request = csi.NodeUnpublishVolumeRequest(
            volume_id=slot.known_id, target_path=str(slot.target)
        )
        await measure(
            samples,
            lambda: self._stubs.node.node_unpublish_volume(request, timeout=self._timeout),
            grpc_code,
        )
        slot.held.discard(Held.PUBLISH)

    async def _unstage(self, slot: CsiSlot, samples: Samples) -> None:
        request = csi.NodeUnstageVolumeRequest(
            volume_id=slot.known_id, staging_target_path=str(slot.staging)
        )
        await measure(
            samples,
            lambda: self._stubs.node.node_unstage_volume(request, timeout=self._timeout),
            grpc_code,
        )
        slot.held.discard(Held.STAGE)
        await _remove_dir(slot.staging)

    async def _delete(self, slot: CsiSlot, samples: Samples) -> None:
        request = csi.DeleteVolumeRequest(volume_id=slot.known_id)
        await measure(
            samples,
            lambda: self._stubs.controller.delete_volume(request, timeout=self._timeout),
            grpc_code,
        )
        slot.held.discard(Held.VOLUME)
        slot.volume_id = None
