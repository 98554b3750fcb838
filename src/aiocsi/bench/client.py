"""CSI client side: one volume lifecycle through the generated stubs, timed call by call.

Each lifecycle remembers what it may have made (a volume, a stage, a publish) before it
asks, and forgets it only when the driver has confirmed the undo, or refused the request
outright. Whatever remains is released in reverse order, the way a CO would retry.
"""

from __future__ import annotations

import contextlib
import enum
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import anyio
from grpclib.client import Channel
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from aiocsi._proto.csi import v1 as csi
from aiocsi.bench.config import Access, VolumeSpec
from aiocsi.bench.runner import Lifecycles, local_code, measure
from aiocsi.bench.workspace import WRITE_FILE, write_and_sync

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from aiocsi.bench.stats import RunRecorder, Samples
    from aiocsi.bench.workspace import Workspace

T = TypeVar("T")

CREATE, STAGE, PUBLISH, WRITE = "CreateVolume", "NodeStageVolume", "NodePublishVolume", "Write"
UNPUBLISH, UNSTAGE, DELETE = "NodeUnpublishVolume", "NodeUnstageVolume", "DeleteVolume"
PROBE = "Probe"
# Refusals: the driver did nothing, so there is nothing to undo.
_DEFINITIVE = frozenset(
    {
        "INVALID_ARGUMENT",
        "OUT_OF_RANGE",
        "RESOURCE_EXHAUSTED",
        "ALREADY_EXISTS",
        "NOT_FOUND",
        "FAILED_PRECONDITION",
        "UNIMPLEMENTED",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
    }
)
# While releasing, the driver may still be busy with an interrupted call on the same volume.
_RETRYABLE = frozenset({"ABORTED", "UNAVAILABLE", "DEADLINE_EXCEEDED"})
_RELEASE_TRIES = 10
_RELEASE_FIRST_DELAY_S = 0.1
_RELEASE_MAX_DELAY_S = 2.0


class NotReady(Exception):
    """Probe answered ready=false."""


class BadResponse(Exception):
    """The driver answered OK with a response the spec does not allow."""


def grpc_code(exc: BaseException) -> str:
    """The gRPC status name for a failed call (or a short name for a local failure)."""
    if isinstance(exc, GRPCError):
        return str(exc.status.name)
    if isinstance(exc, TimeoutError):  # grpclib's deadline
        return "DEADLINE_EXCEEDED"
    if isinstance(exc, NotReady):
        return "NOT_READY"
    if isinstance(exc, BadResponse):
        return "BAD_RESPONSE"
    if isinstance(exc, StreamTerminatedError | ProtocolError | ConnectionError):
        return "UNAVAILABLE"
    return local_code(exc)


@dataclass
class CsiStubs:
    """Generated grpclib clients on one connection to a driver socket."""

    channel: Channel
    identity: csi.IdentityStub
    controller: csi.ControllerStub
    node: csi.NodeStub

    @classmethod
    def connect(cls, socket_path: Path) -> CsiStubs:
        channel = Channel(path=os.fspath(socket_path))
        return cls(
            channel, csi.IdentityStub(channel), csi.ControllerStub(channel), csi.NodeStub(channel)
        )

    def close(self) -> None:
        self.channel.close()

    async def probe(self, deadline_s: float) -> None:
        response = await self.identity.probe(csi.ProbeRequest(), timeout=deadline_s)
        if response.ready is False:
            raise NotReady


def capability(spec: VolumeSpec) -> csi.VolumeCapability:
    writer = csi.VolumeCapabilityAccessModeMode.SINGLE_NODE_WRITER
    mode = csi.VolumeCapabilityAccessMode(mode=writer)
    if spec.access is Access.BLOCK:
        return csi.VolumeCapability(block=csi.VolumeCapabilityBlockVolume(), access_mode=mode)
    return csi.VolumeCapability(
        mount=csi.VolumeCapabilityMountVolume(fs_type=spec.fs_type), access_mode=mode
    )


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
                if grpc_code(exc) not in _RETRYABLE:
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
            if grpc_code(exc) in _DEFINITIVE:
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
