"""Kill test: SIGKILL the driver at random points while a sidecar-like client retries.

At the end every volume the client got an id for is usable or deleted on request, and no
loop device, mount or image file is left. AIOCSI_KILL_ROUNDS sets the number of kills
(CI: 20; a nightly profile can run hundreds).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from aiocsi._proto.csi import v1 as csi
from aiocsi.host.loop import all_loop_backing_files
from aiocsi.host.mount import parse_mountinfo

from .conftest import Csi, mount_capability, volume_id_of
from .process import ServerProcess, serve_process

T = TypeVar("T")
MiB = 1024 * 1024
KILL_ROUNDS = int(os.environ.get("AIOCSI_KILL_ROUNDS", "20"))
RETRYABLE = {
    Status.UNAVAILABLE,
    Status.ABORTED,
    Status.DEADLINE_EXCEEDED,
    Status.CANCELLED,
    Status.UNKNOWN,
    Status.INTERNAL,
}


class Sidecar:
    """Retries every call like a CSI sidecar: on errors that mean "try again", and on a dead
    connection (the driver was killed and is coming back)."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.client = Csi.connect(socket_path)
        self._clients = [self.client]

    def reconnect(self) -> None:
        self.client.channel.close()
        self.client = Csi.connect(self.socket_path)
        self._clients.append(self.client)

    def close(self) -> None:
        """Close every channel ever opened: a close while a channel was still connecting
        (another task's call) leaves the connection it then makes open."""
        for client in self._clients:
            client.channel.close()

    async def call(self, rpc: Callable[[Csi], Awaitable[T]], deadline: float = 60.0) -> T:
        give_up = time.monotonic() + deadline
        while True:
            try:
                return await asyncio.wait_for(rpc(self.client), timeout=5)
            except GRPCError as exc:
                if exc.status not in RETRYABLE:
                    raise
            except (OSError, StreamTerminatedError, TimeoutError, ConnectionError):
                self.reconnect()
            if time.monotonic() > give_up:
                raise TimeoutError("the driver never came back")
            await asyncio.sleep(0.05)


async def _node_round(side: Sidecar, root: Path, name: str, volume_id: str, *, write: bool) -> None:
    """Stage, publish, write (or read back) the volume's data, unpublish, unstage."""
    cap = mount_capability()
    staging, target = root / "s" / name, root / "t" / name
    staging.mkdir(parents=True, exist_ok=True)
    stage = csi.NodeStageVolumeRequest(
        volume_id=volume_id, staging_target_path=str(staging), volume_capability=cap
    )
    publish = csi.NodePublishVolumeRequest(
        volume_id=volume_id,
        staging_target_path=str(staging),
        target_path=str(target),
        volume_capability=cap,
    )
    unpublish = csi.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=str(target))
    unstage = csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=str(staging))
    await side.call(lambda c: c.node.node_stage_volume(stage))
    await side.call(lambda c: c.node.node_publish_volume(publish))
    if write:
        await asyncio.to_thread((target / "data").write_bytes, name.encode())
    else:
        assert (target / "data").read_bytes() == name.encode()
    await side.call(lambda c: c.node.node_unpublish_volume(unpublish))
    await side.call(lambda c: c.node.node_unstage_volume(unstage))


async def _lifecycle(side: Sidecar, root: Path, name: str, keep: bool, ids: dict[str, str]) -> None:
    request = csi.CreateVolumeRequest(
        name=name,
        volume_capabilities=[mount_capability()],
        capacity_range=csi.CapacityRange(required_bytes=16 * MiB),
    )
    volume_id = volume_id_of(await side.call(lambda c: c.controller.create_volume(request)))
    ids[name] = volume_id
    await _node_round(side, root, name, volume_id, write=True)
    if not keep:
        await side.call(
            lambda c: c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=volume_id))
        )
        del ids[name]


async def _killer(
    root: Path, rounds: int, rng: random.Random, started: list[ServerProcess]
) -> None:
    for i in range(rounds):
        async with serve_process(root, socket_path=root / "csi.sock", name=f"run{i}") as server:
            started.append(server)
            await asyncio.sleep(rng.uniform(0.05, 0.6))
            server.signal(signal.SIGKILL)
            await server.wait()
        await _orphans_finished(root)


async def _orphans_finished(root: Path) -> None:
    """A killed driver's children (mkfs, mount) finish on their own: wait for them, by the
    unique test path in their command line, without touching anything else."""
    for _ in range(200):
        procs = Path("/proc").iterdir()  # noqa: ASYNC240 - procfs: no disk behind it
        busy = [p for p in procs if p.name.isdigit() and _mentions(p, root)]
        if not busy:
            return
        await asyncio.sleep(0.05)


def _mentions(proc: Path, root: Path) -> bool:
    try:
        return str(root).encode() in (proc / "cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.timeout(600)
async def test_volumes_survive_repeated_sigkill(cleanup: Path) -> None:
    # Not cryptography: a reproducible schedule of kills (AIOCSI_KILL_SEED).
    rng = random.Random(int(os.environ.get("AIOCSI_KILL_SEED", "1234")))  # noqa: S311
    side = Sidecar(cleanup / "csi.sock")
    ids: dict[str, str] = {}
    started: list[ServerProcess] = []
    killer = asyncio.create_task(_killer(cleanup, KILL_ROUNDS, rng, started))
    # New lifecycles start for as long as the kills go on: every kill lands on a driver at
    # work, however fast it gets through a lifecycle.
    names = (f"k{i:04d}" for i in itertools.count())
    begun = 0
    lifecycles: set[asyncio.Task[None]] = set()
    try:
        while not killer.done():
            while len(lifecycles) < 4:
                name = next(names)
                begun += 1
                lifecycles.add(
                    asyncio.create_task(
                        _lifecycle(side, cleanup, name, keep=rng.random() < 0.3, ids=ids)
                    )
                )
            finished, lifecycles = await asyncio.wait(
                lifecycles | {killer}, return_when=asyncio.FIRST_COMPLETED
            )
            lifecycles.discard(killer)
            for task in finished - {killer}:
                task.result()
        await killer
        assert len(started) == KILL_ROUNDS
        assert begun > KILL_ROUNDS, "too few lifecycles ran between kills"
        # Kills landed mid-operation: some restart had something to finish or undo.
        repairs = [
            e["repaired"] for s in started for e in s.log_lines() if e["event"] == "reconciled"
        ]
        # (Most restarts have something to repair; a quarter is a floor with room to spare.)
        assert sum(1 for repaired in repairs if repaired) >= KILL_ROUNDS // 4, repairs
        async with serve_process(cleanup, socket_path=cleanup / "csi.sock"):
            side.reconnect()
            for task in lifecycles:
                await task
            await _verify_kept_volumes_work(side, cleanup, ids)
            listed = await _listed_volume_ids(side)
            assert sorted(listed) == sorted(ids.values())
            for volume_id in ids.values():
                await _delete(side, volume_id)
    finally:
        side.close()
        killer.cancel()
    assert not list((cleanup / "pool" / "volumes").glob("*.img"))
    assert not [f for f in all_loop_backing_files().values() if f.startswith(str(cleanup))]
    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())  # noqa: ASYNC240 - procfs
    assert not [m for m in mounts if m.mount_point.startswith(str(cleanup))]


async def _delete(side: Sidecar, volume_id: str) -> None:
    request = csi.DeleteVolumeRequest(volume_id=volume_id)
    await side.call(lambda c: c.controller.delete_volume(request))


async def _listed_volume_ids(side: Sidecar) -> list[str]:
    """Every volume ListVolumes lists, its pages followed: more are kept than one holds."""
    listed: list[str] = []
    token = ""
    while True:
        request = csi.ListVolumesRequest(starting_token=token)

        async def page(
            c: Csi, request: csi.ListVolumesRequest = request
        ) -> csi.ListVolumesResponse:
            return await c.controller.list_volumes(request)

        reply = await side.call(page)
        listed += [e.volume.volume_id for e in reply.entries if e.volume]
        if not (token := reply.next_token):
            return listed


async def _verify_kept_volumes_work(side: Sidecar, root: Path, ids: dict[str, str]) -> None:
    for name, volume_id in ids.items():
        await _node_round(side, root, name, volume_id, write=False)
