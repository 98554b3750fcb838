"""Flexvolume ops -> engine requests, on the same engine as the CSI services.

Each op is a sequence of engine calls (create, stage, publish; unpublish, unstage), each
one an engine operation under the same per-volume control as a CSI call: a Flexvolume
mount racing a CSI call on the same volume is refused as a second CSI call would be.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiocsi.config import Config
from aiocsi.engine import mounted
from aiocsi.engine.core import Engine
from aiocsi.engine.policy import EPHEMERAL_KEY, EPHEMERAL_PREFIX
from aiocsi.engine.requests import CapacityRange, CreateVolume, PublishVolume, StageVolume
from aiocsi.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound
from aiocsi.flexvolume import options as opts
from aiocsi.logging import get_logger
from aiocsi.models import AccessMode, AccessType, Capability, Publication, PublicationKind

log = get_logger("aiocsi.flexvolume")
SUCCESS = "Success"
NOT_SUPPORTED = "Not supported"
FAILURE = "Failure"
Reply = dict[str, Any]
# Two pods on one node may share a volume, read-write or read-only: one staged mount,
# one bind per pod.
_MODE = AccessMode.SINGLE_NODE_MULTI_WRITER


@dataclass
class Outcome:
    """What an op did, for its log line."""

    volume: str = ""


def _capability(fs_type: str) -> Capability:
    return Capability(AccessType.MOUNT, _MODE, fs_type)


def _publish(
    pod: opts.PodDir,
    options: opts.MountOptions,
    capability: Capability,
    volume_id: str,
    *,
    staging_path: str = "",
    volume_context: dict[str, str] | None = None,
) -> PublishVolume:
    return PublishVolume(
        volume_id=volume_id,
        target_path=pod.path,
        capability=capability,
        read_only=options.read_only,
        staging_path=staging_path,
        volume_context=volume_context or {},
    )


def _count(args: list[str], wanted: int, usage: str) -> None:
    if len(args) != wanted:
        raise InvalidArgument(f"expected {usage}; got {len(args)} argument(s)")


def _options_arg(text: str) -> dict[str, str]:
    try:
        parsed = json.loads(text)
    except ValueError:
        raise InvalidArgument("the options argument is not valid JSON") from None
    return opts.strings(parsed)


class FlexvolumeFrontEnd:
    # What the driver serves; the executable forwards exactly these (a unit test pins it).
    OPS = ("mount", "unmount", "expandfs", "getvolumename")

    def __init__(self, config: Config, engine: Engine) -> None:
        self._config = config
        self._ctx = engine.resources
        self._volumes = engine.volumes
        self._node = engine.node
        # Volumes a mount of ours is staging and publishing: their stage is about to be used.
        self._mounting: Counter[str] = Counter()
        self._ops: Mapping[str, Callable[[list[str], Outcome], Awaitable[Reply]]] = {
            op: getattr(self, f"_{op}") for op in self.OPS
        }

    async def call(self, op: str, args: list[str], outcome: Outcome) -> Reply:
        handler = self._ops.get(op)
        if handler is None:
            return {"status": NOT_SUPPORTED, "message": f"{op} is not supported"}
        return await handler(args, outcome)

    # -- mount ----------------------------------------------------------------------------

    async def _mount(self, args: list[str], outcome: Outcome) -> Reply:
        _count(args, 2, "mount <mount dir> <options json>")
        target = opts.directory(args[0])
        options = opts.mount_options(_options_arg(args[1]))
        pod = opts.require_pod_dir(target)
        capability = _capability(options.fs_type)
        if options.ephemeral:
            outcome.volume = pod.pod_volume_id
            await self._mount_pod_scoped(pod, options, capability)
        else:
            outcome.volume = options.name
            await self._mount_persistent(pod, options, capability, outcome)
        return {"status": SUCCESS}

    async def _mount_pod_scoped(
        self, pod: opts.PodDir, options: opts.MountOptions, capability: Capability
    ) -> None:
        # The engine's inline-volume path: create, stage and publish as one operation,
        # rolled back whole when any step fails; deleted by its unpublish.
        size = options.size_bytes or self._config.default_volume_size
        context = {EPHEMERAL_KEY: "true", opts.SIZE: str(size)}
        await self._node.publish(
            _publish(pod, options, capability, pod.pod_volume_id, volume_context=context)
        )

    async def _mount_persistent(
        self,
        pod: opts.PodDir,
        options: opts.MountOptions,
        capability: Capability,
        outcome: Outcome,
    ) -> None:
        existed = mounted.volume_named(self._ctx, options.name) is not None
        volume = await self._volumes.create(
            CreateVolume(
                name=options.name,
                capacity=CapacityRange(required_bytes=options.size_bytes),
                capabilities=(capability,),
                parameters=options.parameters,
            ),
        )
        outcome.volume = volume.id
        staging = pod.staging_path(volume.id)
        self._mounting[volume.id] += 1
        try:
            await self._node.stage(StageVolume(volume.id, staging, capability))
            await self._node.publish(
                _publish(pod, options, capability, volume.id, staging_path=staging)
            )
        except Exception:
            # Nothing half-made: the staged mount goes unless another pod uses it (the
            # engine refuses to unstage a published volume), and a volume this call made
            # goes with it (the engine refuses to delete one in use).
            with contextlib.suppress(DomainError):
                await self._unstage(volume.id, staging)
            if not existed:
                with contextlib.suppress(DomainError):
                    await self._volumes.delete(volume.id)
            raise
        finally:
            self._mounting[volume.id] -= 1
            if not self._mounting[volume.id]:
                del self._mounting[volume.id]

    # -- unmount --------------------------------------------------------------------------

    async def _unmount(self, args: list[str], outcome: Outcome) -> Reply:
        _count(args, 1, "unmount <mount dir>")
        target = opts.directory(args[0])
        pub = mounted.publication_at(self._ctx, target)
        volume_id = pub.volume_id if pub is not None else await self._unrecorded(target)
        if volume_id is None:
            await self._release_unused_stages(opts.pod_dir(target))
            return {"status": SUCCESS, "message": f"{target} holds no aiocsi volume"}
        outcome.volume = volume_id
        volume = self._volumes.get(volume_id)
        await self._node.unpublish(volume.id, target)
        if not volume.ephemeral:
            await self._unstage_if_unused(volume.id, opts.pod_dir(target))
        await self._release_unused_stages(opts.pod_dir(target))
        return {"status": SUCCESS}

    async def _unrecorded(self, target: str) -> str | None:
        """The volume at a path with no publication record: a mount made by a call that
        died before recording it, or a pod-scoped volume whose record a reboot cleared."""
        seen = await mounted.mount_at(self._ctx, target)
        if seen.volume_id is not None:
            return seen.volume_id
        if seen.mounted:
            raise FailedPrecondition(
                f"{target} has a mount of {seen.source} that is not an aiocsi volume; "
                "it is left alone"
            )
        pod = opts.pod_dir(target)
        if pod is None:
            return None
        volume = mounted.volume_named(self._ctx, EPHEMERAL_PREFIX + pod.pod_volume_id)
        return volume.id if volume is not None and volume.ephemeral else None

    async def _unstage_if_unused(self, volume_id: str, pod: opts.PodDir | None) -> None:
        if pod is None:
            return
        if mounted.is_published(self._ctx, volume_id):
            return  # another pod on this node still uses the staged mount
        staging = pod.staging_path(volume_id)
        if mounted.publication_at(self._ctx, staging, PublicationKind.STAGE) is not None:
            await self._unstage(volume_id, staging)

    async def _unstage(self, volume_id: str, staging: str) -> None:
        await self._node.unstage(volume_id, staging)
        await mounted.remove_empty_dir(self._ctx, staging)

    async def _release_unused_stages(self, pod: opts.PodDir | None) -> None:
        """Finish unmounts that unpublished but failed to unstage (the engine removed
        their dir, so the kubelet calls them no more): release every staged mount that no
        pod uses and no mount of ours is about to use."""
        if pod is None:
            return
        root = pod.staging_path("")
        for stage in mounted.stages(self._ctx):
            if (
                stage.path.startswith(root)
                and stage.volume_id not in self._mounting
                and not mounted.is_published(self._ctx, stage.volume_id)
            ):
                try:
                    await self._unstage(stage.volume_id, stage.path)
                except DomainError as exc:
                    log.warning("flexvolume_stage_kept", volume_id=stage.volume_id, error=str(exc))

    # -- expandfs / getvolumename ---------------------------------------------------------

    async def _expandfs(self, args: list[str], outcome: Outcome) -> Reply:
        usage = "expandfs <options json> <device path> <mount dir> <new size> <old size>"
        _count(args, 5, usage)
        _options_arg(args[0])
        target = opts.directory(args[2])
        wanted = opts.new_bytes(args[3])
        pub = await self._publication(target)
        outcome.volume = pub.volume_id
        await self._node.expand(pub.volume_id, target, CapacityRange(required_bytes=wanted))
        spans = await mounted.filesystem_bytes(self._ctx, target)
        if spans < wanted:
            raise FailedPrecondition(
                f"the filesystem at {target} spans {spans} bytes after growing, less than the "
                f"{wanted} asked for"
            )
        return {"status": SUCCESS, "volumeNewSize": spans}

    async def _publication(self, target: str) -> Publication:
        pub = mounted.publication_at(self._ctx, target)
        if pub is None:
            raise NotFound(f"{target} is not a mount of an aiocsi volume")
        return pub

    async def _getvolumename(self, args: list[str], outcome: Outcome) -> Reply:
        _count(args, 1, "getvolumename <options json>")
        options = _options_arg(args[0])
        name = opts.volume_name(options)
        outcome.volume = name
        return {"status": SUCCESS, "volumeName": name}
