"""Fuzzing the real server (issue 6): generated requests for every RPC, raw bytes and HTTP/2
frames on the socket itself, against ONE long-lived in-process driver.

The driver runs on its own event loop in a background thread; hypothesis drives plain
synchronous tests that hand each call to that loop. After every example: the answer is
never INTERNAL or UNKNOWN; after every test: Probe is ready and nothing leaked (every
image, loop device, mount and database row belongs to a volume the driver lists).

Profiles (docs/security.md): HYPOTHESIS_PROFILE=ci (the default, bounded for CI) or
HYPOTHESIS_PROFILE=nightly (many more examples per RPC).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import os
import socket
import sqlite3
import struct
import tempfile
import threading
import typing
from collections.abc import Coroutine, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiocsi._proto.csi import v1 as csi
from aiocsi.config import Config
from aiocsi.engine.policy import FS_MOUNT_FLAGS, GENERIC_MOUNT_FLAGS
from aiocsi.host.loop import all_loop_backing_files
from aiocsi.host.mount import parse_mountinfo
from aiocsi.logging import configure
from aiocsi.server.app import DriverServer

from .conftest import block_capability, driver_config, mount_capability, release_under

PROFILE_NAME = os.environ.get("HYPOTHESIS_PROFILE", "ci")
# The nightly profile runs each test for minutes; CI's stays within the usual 120 s.
pytestmark = [pytest.mark.system, pytest.mark.timeout(120 if PROFILE_NAME == "ci" else 3600)]

T = TypeVar("T")
MiB = 1024 * 1024
GiB = 1024 * MiB
NODE = "test-node"
# Bounds the pool's provisioning budget, so that random sizes and `preallocate` never take
# more than this from the host's disk.
POOL_BUDGET = 4 * GiB
CALL_TIMEOUT = 60.0
# Answers that mean "the driver failed", never acceptable for what a client sent.
DRIVER_FAULTS = {Status.INTERNAL, Status.UNKNOWN}

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "nightly",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile(PROFILE_NAME)
# Raw socket input is cheaper per example than a request that may create a volume.
RAW_PROFILE = settings(PROFILE, max_examples=PROFILE.max_examples * 4)

SERVICES = (
    csi.IdentityBase,
    csi.ControllerBase,
    csi.NodeBase,
    csi.GroupControllerBase,
    csi.SnapshotMetadataBase,
)


@dataclass(frozen=True)
class Rpc:
    path: str
    cardinality: Cardinality
    request_type: type[Any]
    reply_type: type[Any]

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[1]


def all_rpcs() -> list[Rpc]:
    return [
        Rpc(path, handler.cardinality, handler.request_type, handler.reply_type)
        for base in SERVICES
        for path, handler in base().__mapping__().items()
    ]


RPCS = {rpc.name: rpc for rpc in all_rpcs()}


# -- the long-lived driver in its own thread ---------------------------------------------------


class LoopThread:
    """An event loop running in a background thread; `run` hands it a coroutine."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-driver")
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise

    def close(self) -> None:
        async def cancel_the_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        self.run(cancel_the_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class Fuzzed:
    """The driver under fuzz and what the strategies aim at.

    Not a dataclass: hypothesis would print every field with each failing example.
    """

    def __init__(
        self, runner: LoopThread, channel: Channel, root: Path, config: Config, log: io.StringIO
    ) -> None:
        self.runner = runner
        self.channel = channel
        self.root = root
        self.config = config
        self.log = log
        self.known_volumes: list[str] = []
        self.known_snapshots: list[str] = []
        self.paths: list[str] = []
        self.good_paths: list[str] = []
        self.strategies: dict[str, st.SearchStrategy[Any]] = {}
        self.first_leak: str | None = None

    def __repr__(self) -> str:
        return f"Fuzzed({self.root})"

    @property
    def pool(self) -> Path:
        return self.config.pool

    @property
    def allowed(self) -> Path:
        return self.root / "allowed"

    def call(self, rpc: Rpc, request: object) -> tuple[Status, str]:
        """Send `request` as `rpc`; return the status and message (OK: "")."""
        return self.runner.run(_call(self.channel, rpc, request))

    def ok(self, rpc_name: str, request: object) -> Any:
        return self.runner.run(_reply(self.channel, RPCS[rpc_name], request))


async def _call(channel: Channel, rpc: Rpc, request: object) -> tuple[Status, str]:
    try:
        await _reply(channel, rpc, request)
    except GRPCError as exc:
        return exc.status, exc.message or ""
    return Status.OK, ""


async def _reply(channel: Channel, rpc: Rpc, request: object) -> object:
    async with channel.request(
        rpc.path, rpc.cardinality, rpc.request_type, rpc.reply_type, timeout=CALL_TIMEOUT
    ) as stream:
        await stream.send_message(request, end=True)
        replies = [reply async for reply in stream]
    return replies[0] if replies else None


def _budget_overcommit(pool_parent: Path) -> float:
    st_ = os.statvfs(pool_parent)
    return POOL_BUDGET / (st_.f_bavail * st_.f_frsize)


@pytest.fixture(scope="module")
def fuzzed(test_root: Path) -> Iterator[Fuzzed]:
    root = Path(tempfile.mkdtemp(dir=test_root, prefix="fuzz-"))
    (root / "allowed").mkdir()
    (root / "outside").mkdir()
    log = io.StringIO()
    # Debug: every request is also rendered to the log, which must survive any of them.
    configure("json", "debug", stream=log)
    config = driver_config(
        root,
        allowed_path_roots=(root / "allowed",),
        enable_attach=True,
        overcommit=_budget_overcommit(root),
        default_volume_size=16 * MiB,
    )
    runner = LoopThread()
    # grpclib binds a server and a channel to the loop they are made on: make them there.
    server = runner.run(_started(config))
    channel = runner.run(_channel(config.socket_path))
    try:
        fuzz = Fuzzed(runner, channel, root, config, log)
        _plant_paths(fuzz)
        _ensure_known(fuzz)
        yield fuzz
        _reset(fuzz, keep_known=False)
        assert_nothing_leaked(fuzz)
        assert _pool_records(fuzz) == ([], [], [])
    finally:
        runner.run(_close(channel))
        with contextlib.suppress(Exception):
            runner.run(server.drain(), timeout=30)
        runner.run(server.close(), timeout=30)
        runner.close()
        configure("json", "info")
        release_under(root)


async def _started(config: Config) -> DriverServer:
    server = DriverServer(config)
    await server.start()
    return server


async def _channel(socket_path: Path) -> Channel:
    return Channel(path=str(socket_path))  # created on the driver's loop, used there only


async def _close(channel: Channel) -> None:
    channel.close()


def _plant_paths(fuzz: Fuzzed) -> None:
    """Targets for staging/target paths: plain directories, and symlinks that escape."""
    allowed = fuzz.allowed
    for name in ("p0", "p1", "p2", "p3"):
        (allowed / name).mkdir()
    (allowed / "to-etc").symlink_to("/etc")
    (allowed / "to-outside").symlink_to(fuzz.root / "outside")
    (allowed / "dangling").symlink_to(fuzz.root / "outside" / "nothing")
    fuzz.good_paths = [
        *(str(allowed / name) for name in ("p0", "p1", "p2", "p3")),
        str(allowed / "p0" / "sub"),
        str(allowed / "new" / "deeper"),
        str(allowed / "file"),
    ]
    fuzz.paths = [
        *fuzz.good_paths,
        str(allowed / "to-etc"),
        str(allowed / "to-etc" / "aiocsi-fuzz"),
        str(allowed / "to-outside" / "x"),
        str(allowed / "dangling"),
        f"{allowed}/../outside/x",
        f"{allowed}/p0/../p1",
        f"{allowed}//p0",
        f"{allowed}/",
        str(allowed),
        "/etc/aiocsi-fuzz",
        "/",
        "relative/path",
        "",
        str(fuzz.pool),
        str(fuzz.pool / "volumes"),
    ]


KNOWN = (
    ("known-ext4", mount_capability("ext4"), 16 * MiB),
    ("known-block", block_capability(), 16 * MiB),
    ("known-xfs", mount_capability("xfs"), 300 * MiB),
)


def _ensure_known(fuzz: Fuzzed) -> None:
    """(Re)create the volumes and snapshot the strategies aim at; idempotent by name."""
    fuzz.known_volumes[:] = []
    for name, cap, size in KNOWN:
        reply = fuzz.ok(
            "CreateVolume",
            csi.CreateVolumeRequest(
                name=name,
                volume_capabilities=[cap],
                capacity_range=csi.CapacityRange(required_bytes=size),
            ),
        )
        fuzz.known_volumes.append(reply.volume.volume_id)
    snap = fuzz.ok(
        "CreateSnapshot",
        csi.CreateSnapshotRequest(name="known-snap", source_volume_id=fuzz.known_volumes[0]),
    )
    fuzz.known_snapshots[:] = [snap.snapshot.snapshot_id]
    # Staged and published, so that node calls meet real mounts and devices.
    allowed = fuzz.allowed
    ext4, block, _ = fuzz.known_volumes
    for volume_id, cap, staging, target in (
        (ext4, mount_capability("ext4"), allowed / "p0", allowed / "p1"),
        (block, block_capability(), allowed / "p2", allowed / "file"),
    ):
        fuzz.ok(
            "NodeStageVolume",
            csi.NodeStageVolumeRequest(
                volume_id=volume_id, staging_target_path=str(staging), volume_capability=cap
            ),
        )
        fuzz.ok(
            "NodePublishVolume",
            csi.NodePublishVolumeRequest(
                volume_id=volume_id,
                staging_target_path=str(staging),
                target_path=str(target),
                volume_capability=cap,
            ),
        )


# -- what the pool holds, and what the driver says it holds ---------------------------------


def _pool_records(fuzz: Fuzzed) -> tuple[list[tuple[str, str]], list[str], list[tuple[str, ...]]]:
    db = fuzz.pool / "aiocsi.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        volumes = conn.execute("SELECT id, state FROM volumes ORDER BY id").fetchall()
        snapshots = [r[0] for r in conn.execute("SELECT id FROM snapshots ORDER BY id")]
        pubs = conn.execute(
            "SELECT volume_id, kind, path FROM publications ORDER BY volume_id, kind, path"
        ).fetchall()
    return [tuple(v) for v in volumes], snapshots, [tuple(p) for p in pubs]


def _mounts_under(root: Path) -> list[tuple[str, str]]:
    text = os.fsdecode(Path("/proc/self/mountinfo").read_bytes())
    return [
        (m.mount_point, m.source if m.fs_type != "devtmpfs" else f"/dev{m.root}")
        for m in parse_mountinfo(text)
        if m.mount_point.startswith(f"{root}/")
    ]


def _all_entries(fuzz: Fuzzed, rpc_name: str, request_type: type) -> list[Any]:
    """Every entry a listing returns, its pages followed (a page holds 100)."""
    entries: list[Any] = []
    token = ""
    while True:
        reply = fuzz.ok(rpc_name, request_type(starting_token=token))
        entries += reply.entries
        if not (token := reply.next_token):
            return entries


def _listed(fuzz: Fuzzed) -> tuple[set[str], set[str]]:
    volumes = _all_entries(fuzz, "ListVolumes", csi.ListVolumesRequest)
    snapshots = _all_entries(fuzz, "ListSnapshots", csi.ListSnapshotsRequest)
    return (
        {e.volume.volume_id for e in volumes},
        {e.snapshot.snapshot_id for e in snapshots},
    )


def leaks(fuzz: Fuzzed) -> list[str]:
    """What does not add up: every image, loop device, mount and row must belong to a volume
    the driver lists, and every staging or target path to one volume only."""
    volumes, snapshots = _listed(fuzz)
    rows, snap_rows, pubs = _pool_records(fuzz)
    images = {p.name.removesuffix(".img") for p in (fuzz.pool / "volumes").iterdir()}
    snap_images = {p.name.removesuffix(".img") for p in (fuzz.pool / "snapshots").iterdir()}
    loops = {
        dev: Path(backing).name.removesuffix(".img")
        for dev, backing in all_loop_backing_files().items()
        if backing.startswith(f"{fuzz.root}/")
    }
    node_paths = [path for _, kind, path in pubs if kind != "controller"]
    staged = sorted(vid for vid, kind, _ in pubs if kind == "stage")
    checks = {
        "database rows and listed volumes differ": {vid for vid, _ in rows} != volumes,
        "a volume is not ready": any(state != "ready" for _, state in rows),
        "snapshot rows and listed snapshots differ": set(snap_rows) != snapshots,
        "volume images and listed volumes differ": images != volumes,
        "snapshot images and listed snapshots differ": snap_images != snapshots,
        "a publication names an unknown volume": not {vid for vid, _, _ in pubs} <= volumes,
        # Two volumes on one path: either one's unstage or unpublish meets the other's mount.
        "a staging or target path serves two volumes": len(node_paths) != len(set(node_paths)),
        # A loop device exists only for a staged volume, at most one each.
        "loop devices and staged volumes differ": sorted(loops.values()) != staged,
        "a mount is not one of a staged volume's devices": any(
            source not in loops for _, source in _mounts_under(fuzz.root)
        ),
        "a mount is at a path nobody recorded": any(
            point not in node_paths for point, _ in _mounts_under(fuzz.root)
        ),
        "something appeared outside the allowed root": any((fuzz.root / "outside").iterdir())
        or Path("/etc/aiocsi-fuzz").exists(),
    }
    found = [what for what, wrong in checks.items() if wrong]
    return [*found, f"publications: {pubs}", f"loops: {loops}"] if found else []


def assert_nothing_leaked(fuzz: Fuzzed) -> None:
    assert leaks(fuzz) == []


def check_after(fuzz: Fuzzed, rpc: Rpc, request: object) -> None:
    """Fail on a leak, naming the first request after which one appeared: hypothesis cannot
    shrink state that earlier examples left behind, so its own report may not show it."""
    found = leaks(fuzz)
    if found and fuzz.first_leak is None:
        fuzz.first_leak = f"{rpc.name}({request!r})"
    assert found == [], f"first after {fuzz.first_leak}"


def _reset(fuzz: Fuzzed, *, keep_known: bool = True) -> None:
    """Undo what the examples made, through the driver itself: unpublish, unstage, delete."""
    for kind in ("publish", "stage", "controller"):
        # Read again for each kind: unpublishing an inline volume also unstages and deletes it.
        _, _, pubs = _pool_records(fuzz)
        for vid, pub_kind, path in pubs:
            if pub_kind != kind:
                continue
            if kind == "publish":
                fuzz.ok(
                    "NodeUnpublishVolume",
                    csi.NodeUnpublishVolumeRequest(volume_id=vid, target_path=path),
                )
            elif kind == "stage":
                fuzz.ok(
                    "NodeUnstageVolume",
                    csi.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=path),
                )
            else:
                fuzz.ok(
                    "ControllerUnpublishVolume",
                    csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=path),
                )
    # Everything goes, the known volumes too: examples may have grown or deleted them.
    volumes, snapshots = _listed(fuzz)
    for sid in snapshots:
        fuzz.ok("DeleteSnapshot", csi.DeleteSnapshotRequest(snapshot_id=sid))
    for vid in volumes:
        fuzz.ok("DeleteVolume", csi.DeleteVolumeRequest(volume_id=vid))
    if keep_known:
        _ensure_known(fuzz)


# -- strategies: any request, with the values that matter drawn often --------------------------

MAX_DEPTH = 3  # deep enough for every CSI request
INT_BOUNDS = {
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}
INT_EDGES = [
    0,
    1,
    -1,
    511,
    512,
    MiB,
    16 * MiB,
    300 * MiB,
    2**31 - 1,
    2**31,
    2**40,
    2**62,
    2**63 - 1,
    -(2**63),
]
ODD_TEXT = [
    "",
    " ",
    "..",
    "../x",
    "/",
    "a\x00b",
    "\x00",
    "x" * 128,
    "x" * 129,
    "é" * 64,
    "é" * 65,
    "𝄞" * 32,
    "𝄞" * 33,
    "\u202e",
    "\ufeff",
    "\n",
    "*",
    "%s",
    "${HOME}",
    "\\",
    "vol-",
    "vol-" + "0" * 32,
    "vol-../../etc",
    "snap-" + "0" * 32,
    "snap-../../x",
    "1",
    "-1",
    "9" * 19,
    "²",
]
FLAGS = sorted(GENERIC_MOUNT_FLAGS.union(*FS_MOUNT_FLAGS.values()))
VALUED_FLAGS = [
    "commit=5",
    "commit=999999",
    "data=journal",
    "errors=remount-ro",
    "logbufs=8",
    "allocsize=64k",
    "logbsize=32k",
    "compress=zstd:3",
    "space_cache=v2",
    "stripe=4",
]
REFUSED = [
    "bind",
    "remount",
    "suid",
    "dev",
    "exec",
    "loop=/etc/passwd",
    "uid=0",
    "a,b",
    "errors=panic",
]
MAP_KEYS = [
    "preallocate",
    "size",
    "csi.storage.k8s.io/ephemeral",
    "csi.storage.k8s.io/pv/name",
    "topology.aiocsi.dev/node",
    "token",
]
MAP_VALUES = ["true", "false", "TRUE", "16Mi", "1Gi", "1Ei", "9" * 30, "test-node", "x"]


def utf8_text(max_size: int = 40) -> st.SearchStrategy[str]:
    # Protobuf strings are UTF-8: lone surrogates cannot be sent at all.
    return st.text(st.characters(codec="utf-8"), max_size=max_size)


def string_maps() -> st.SearchStrategy[dict[str, str]]:
    return st.one_of(
        st.just({}),
        st.dictionaries(st.sampled_from(MAP_KEYS), st.sampled_from(MAP_VALUES), max_size=3),
        st.dictionaries(utf8_text(20), utf8_text(60), max_size=4),
        # Around the 4 KiB limit: one entry of (key + value) bytes.
        st.integers(4080, 4110).map(lambda n: {"k": "v" * (n - 1)}),
        st.just({"csi.storage.k8s.io/ephemeral": "true", "size": "16Mi"}),
    )


def _pick(items: list[str]) -> st.SearchStrategy[str]:
    # Drawn when used: the lists change as the known volumes are re-created.
    return st.integers(min_value=0, max_value=63).map(lambda i: items[i % len(items)])


def strings_for(fuzz: Fuzzed, name: str) -> st.SearchStrategy[str]:
    options: list[st.SearchStrategy[str]] = [utf8_text(), st.sampled_from(ODD_TEXT)]
    if name in ("volume_id", "source_volume_id"):
        options += [_pick(fuzz.known_volumes)] * 3
    elif name == "snapshot_id":
        options += [_pick(fuzz.known_snapshots)] * 3
    elif name.endswith("path"):
        options += [st.sampled_from(fuzz.paths)] * 4
    elif name == "node_id":
        options += [st.just(NODE)] * 2
    elif name == "name":
        options += [utf8_text(20).map(lambda s: f"fz-{s}"), st.sampled_from(["known-ext4"])]
    elif name == "fs_type":
        options += [st.sampled_from(["ext4", "xfs", "btrfs", "", "vfat", "../ext4"])] * 2
    elif name == "starting_token":
        options += [st.integers(0, 10**19).map(str)]
    return st.one_of(*options)


def scalar_for(meta: Any, hint: Any) -> st.SearchStrategy[Any] | None:
    proto_type = meta.proto_type
    if proto_type in INT_BOUNDS:
        low, high = INT_BOUNDS[proto_type]
        edges = [v for v in INT_EDGES if low <= v <= high]
        return st.one_of(st.sampled_from(edges), st.integers(low, high))
    if proto_type == "bool":
        return st.booleans()
    if proto_type == "enum":
        return st.one_of(st.sampled_from(list(hint)), st.integers(-(2**31), 2**31 - 1).map(hint))
    return None


def message_strategy(fuzz: Fuzzed, cls: type[Any], depth: int = 0) -> st.SearchStrategy[Any]:
    if cls is csi.VolumeCapability and depth:
        return st.one_of(capabilities(), _generic_message(fuzz, cls, depth))
    return _generic_message(fuzz, cls, depth)


def _generic_message(fuzz: Fuzzed, cls: type[Any], depth: int) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls, vars(csi))
    kwargs: dict[str, st.SearchStrategy[Any]] = {}
    for spec in dataclasses.fields(cls):
        meta = spec.metadata["betterproto"]
        kwargs[spec.name] = _field(fuzz, spec.name, meta, hints[spec.name], depth)
    return st.builds(cls, **kwargs)


def _repeated(fuzz: Fuzzed, name: str, meta: Any, hint: Any, depth: int) -> st.SearchStrategy[Any]:
    (item,) = typing.get_args(hint)
    if meta.proto_type != "string":
        return (
            st.just([])
            if depth >= MAX_DEPTH
            else st.lists(message_strategy(fuzz, item, depth + 1), max_size=3)
        )
    if name == "mount_flags":
        flag = st.sampled_from([*FLAGS, *VALUED_FLAGS, *REFUSED])
        return st.one_of(
            st.lists(flag, max_size=5),
            st.lists(utf8_text(), max_size=3),
            st.just(["noatime"] * 200),
        )
    return st.lists(strings_for(fuzz, name), max_size=3)


def _field(fuzz: Fuzzed, name: str, meta: Any, hint: Any, depth: int) -> st.SearchStrategy[Any]:
    if meta.proto_type == "map":
        return string_maps()
    if meta.repeated:
        return _repeated(fuzz, name, meta, hint, depth)
    if meta.proto_type == "string":
        return strings_for(fuzz, name)
    if meta.proto_type == "message":
        (cls, _) = typing.get_args(hint)  # `X | None`
        if depth >= MAX_DEPTH:
            return st.none()
        return st.one_of(st.none(), message_strategy(fuzz, cls, depth + 1))
    scalar = scalar_for(meta, hint)
    assert scalar is not None, (name, meta)
    return scalar


def capabilities() -> st.SearchStrategy[csi.VolumeCapability]:
    """Capabilities that NodeStage can honour, often: the fuzz must get past validation."""
    mode = st.sampled_from([1, 2, 6, 7])
    flags = st.lists(st.sampled_from([*sorted(GENERIC_MOUNT_FLAGS), *VALUED_FLAGS[:2]]), max_size=3)
    mount = st.builds(
        lambda fs, m, f: mount_capability(fs, m, tuple(f)),
        st.sampled_from(["ext4", "xfs", "btrfs", ""]),
        mode,
        flags,
    )
    return st.one_of(mount, st.builds(block_capability, mode))


EPHEMERAL_CONTEXT = {"csi.storage.k8s.io/ephemeral": "true", "size": "16Mi"}


def plausible_fields(fuzz: Fuzzed) -> dict[str, st.SearchStrategy[Any]]:
    """Values that get a request past validation, so that the engine and the host are
    reached too: real volumes, paths under the allowed root, capabilities NodeStage honours."""
    good_paths = st.sampled_from(fuzz.good_paths)
    return {
        "volume_id": _pick(fuzz.known_volumes),
        "source_volume_id": _pick(fuzz.known_volumes),
        "snapshot_id": _pick(fuzz.known_snapshots),
        "staging_target_path": good_paths,
        "target_path": good_paths,
        "volume_path": good_paths,
        "volume_capability": capabilities(),
        "volume_capabilities": st.lists(capabilities(), min_size=1, max_size=2),
        "secrets": st.just({}),
        "publish_context": st.just({}),
        "volume_context": st.sampled_from([{}, EPHEMERAL_CONTEXT]),
        "parameters": st.sampled_from([{}, {"preallocate": "false"}, {"preallocate": "true"}]),
        "mutable_parameters": st.sampled_from([{}, {"preallocate": "false"}]),
        "node_id": st.just(NODE),
        "name": st.sampled_from(["fz-a", "fz-b", "known-ext4"]),
        "capacity_range": st.builds(
            csi.CapacityRange,
            required_bytes=st.sampled_from([0, MiB, 16 * MiB, 40 * MiB, 300 * MiB]),
            limit_bytes=st.sampled_from([0, 0, 64 * MiB, GiB]),
        ),
        "starting_token": st.just(""),
        "max_entries": st.integers(0, 3),
        "volume_content_source": st.none(),
    }


def request_strategy(fuzz: Fuzzed, rpc: Rpc) -> st.SearchStrategy[Any]:
    """Any request half of the time; otherwise one whose key fields are mostly plausible."""
    cached = fuzz.strategies.get(rpc.path)
    if cached is None:
        cls = rpc.request_type
        hints = typing.get_type_hints(cls, vars(csi))
        good = plausible_fields(fuzz)
        kwargs = {}
        for spec in dataclasses.fields(cls):
            anything = _field(fuzz, spec.name, spec.metadata["betterproto"], hints[spec.name], 0)
            kwargs[spec.name] = (
                st.one_of(good[spec.name], good[spec.name], good[spec.name], anything)
                if spec.name in good
                else anything
            )
        cached = st.one_of(message_strategy(fuzz, cls), st.builds(cls, **kwargs))
        fuzz.strategies[rpc.path] = cached
    return cached


# -- the tests --------------------------------------------------------------------------------


@contextlib.contextmanager
def afterwards_reset(fuzz: Fuzzed) -> Iterator[None]:
    """Reset the pool for the next test; after a failure, as far as the driver lets us."""
    fuzz.first_leak = None
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            _reset(fuzz)
        raise
    _reset(fuzz)


def _probe(fuzz: Fuzzed) -> None:
    assert fuzz.ok("Probe", csi.ProbeRequest()).ready is True


def _no_driver_errors_logged(fuzz: Fuzzed) -> None:
    events = [json.loads(line) for line in fuzz.log.getvalue().splitlines() if line]
    errors = [e for e in events if e.get("level") in ("error", "critical")]
    assert errors == []
    fuzz.log.seek(0)
    fuzz.log.truncate()


@pytest.mark.parametrize("rpc_name", sorted(RPCS))
def test_every_rpc_survives_generated_requests(fuzzed: Fuzzed, rpc_name: str) -> None:
    rpc = RPCS[rpc_name]
    seen: dict[str, int] = {}

    @PROFILE
    @given(data=st.data())
    def examples(data: st.DataObject) -> None:
        request = data.draw(request_strategy(fuzzed, rpc), label="request")
        status, message = fuzzed.call(rpc, request)
        seen[status.name] = seen.get(status.name, 0) + 1
        assert status not in DRIVER_FAULTS, f"{status.name}: {message}"
        if status is not Status.OK:
            assert message, "every refusal says why"
        check_after(fuzzed, rpc, request)

    with afterwards_reset(fuzzed):
        examples()
        _probe(fuzzed)
        assert_nothing_leaked(fuzzed)
    assert_nothing_leaked(fuzzed)
    _no_driver_errors_logged(fuzzed)
    assert sum(seen.values()) >= 1, seen


STATEFUL_RPCS = sorted(
    name
    for name, rpc in RPCS.items()
    if rpc.path.startswith(("/csi.v1.Controller/", "/csi.v1.Node/"))
)


def test_random_sequences_of_calls_leave_a_consistent_pool(fuzzed: Fuzzed) -> None:
    """Sequences across every Controller and Node RPC reach states one RPC alone cannot
    (staged, then published, expanded, snapshotted, deleted...)."""

    @settings(PROFILE, max_examples=max(PROFILE.max_examples // 2, 1))
    @given(data=st.data())
    def sequences(data: st.DataObject) -> None:
        for _ in range(data.draw(st.integers(1, 8), label="length")):
            rpc = RPCS[data.draw(st.sampled_from(STATEFUL_RPCS), label="rpc")]
            request = data.draw(request_strategy(fuzzed, rpc), label=rpc.name)
            status, message = fuzzed.call(rpc, request)
            assert status not in DRIVER_FAULTS, f"{rpc.name} {status.name}: {message}"
            check_after(fuzzed, rpc, request)

    with afterwards_reset(fuzzed):
        sequences()
        _probe(fuzzed)
    assert_nothing_leaked(fuzzed)
    _no_driver_errors_logged(fuzzed)


# -- raw bytes and HTTP/2 frames on the socket ------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def raw_bytes(sock_path: Path, data: bytes) -> bytes:
    """Send `data` on a fresh connection; return what came back within a short while."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.02)
        sock.connect(str(sock_path))
        with contextlib.suppress(OSError):
            sock.sendall(data)
        received = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                received += chunk
        return received


@dataclass
class H2Answer:
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False
    closed: bool = False

    @property
    def grpc_status(self) -> Status | None:
        code = self.headers.get("grpc-status")
        return Status(int(code)) if code is not None else None


def grpc_request(
    sock_path: Path, path: str, body: bytes, headers: list[tuple[str, str]] | None = None
) -> H2Answer:
    """One HTTP/2 request on a fresh connection, body sent as flow control allows."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(
        stream_id,
        headers
        or [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "aiocsi"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
        end_stream=not body,
    )
    pending = body
    answer = H2Answer()

    def pump() -> None:
        nonlocal pending
        while pending:
            size = min(
                conn.local_flow_control_window(stream_id),
                conn.max_outbound_frame_size,
                len(pending),
            )
            if size <= 0:
                return
            conn.send_data(stream_id, pending[:size], end_stream=size == len(pending))
            pending = pending[size:]

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(sock_path))
        pump()
        sock.sendall(conn.data_to_send())
        while "grpc-status" not in answer.headers and not answer.reset:
            data = sock.recv(65536)
            if not data:
                answer.closed = True
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    answer.headers.update(dict(event.headers))  # type: ignore[arg-type]
                elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                    answer.reset = True
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                pump()
            sock.sendall(conn.data_to_send())
    return answer


def framed(body: bytes, *, compressed: bool = False, length: int | None = None) -> bytes:
    return struct.pack(">?I", compressed, len(body) if length is None else length) + body


UNARY_PATHS = sorted(r.path for r in RPCS.values() if r.cardinality is Cardinality.UNARY_UNARY)


@RAW_PROFILE
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda n, tail: PREFACE[:n] + tail,
            st.integers(0, len(PREFACE)),
            st.binary(max_size=100),
        ),
        st.builds(lambda tail: PREFACE + tail, st.binary(max_size=300)),
    )
)
def test_garbage_on_the_socket_never_hurts(fuzzed: Fuzzed, data: bytes) -> None:
    raw_bytes(fuzzed.config.socket_path, data)
    # A fresh connection still gets answers at once.
    assert (
        grpc_request(fuzzed.config.socket_path, "/csi.v1.Identity/Probe", framed(b"")).grpc_status
        is Status.OK
    )


@RAW_PROFILE
@given(
    path=st.sampled_from(UNARY_PATHS),
    body=st.one_of(
        st.binary(max_size=2000).map(framed),
        st.binary(max_size=200).map(lambda b: framed(b, compressed=True)),
        st.tuples(st.binary(max_size=200), st.integers(0, 2**32 - 1)).map(
            lambda t: framed(t[0], length=t[1])
        ),
        st.binary(min_size=1, max_size=4),  # a prefix cut short
        st.just(framed(b"\x0a" + b"\xff" * 10 + b"\x01")),
        st.just(b""),  # no message at all
    ),
)
def test_corrupt_grpc_bodies_are_the_callers_error(fuzzed: Fuzzed, path: str, body: bytes) -> None:
    answer = grpc_request(fuzzed.config.socket_path, path, body)
    assert answer.grpc_status is not None, answer
    assert answer.grpc_status not in DRIVER_FAULTS, answer.headers


def test_oversized_messages_are_refused_from_their_prefix(fuzzed: Fuzzed) -> None:
    sock = fuzzed.config.socket_path
    for body in (framed(b"", length=2**32 - 1), framed(b"\x0a\x01a" + b"\x00" * (5 * MiB))):
        answer = grpc_request(sock, "/csi.v1.Controller/CreateVolume", body)
        assert answer.grpc_status is Status.RESOURCE_EXHAUSTED, answer.headers
        assert "at most 4194304" in answer.headers["grpc-message"]
    # A map just over 4 KiB inside a small message is the spec's limit, not the wire's.
    request = csi.DeleteVolumeRequest(volume_id="v", secrets={"k": "v" * 4096})
    answer = grpc_request(sock, "/csi.v1.Controller/DeleteVolume", framed(bytes(request)))
    assert answer.grpc_status is Status.INVALID_ARGUMENT
    _probe(fuzzed)


def test_requests_grpclib_refuses_before_any_handler_are_http_errors(fuzzed: Fuzzed) -> None:
    """Not a gRPC call at all (wrong content-type, no `te: trailers`): grpclib answers these
    itself, with an HTTP error status, before any handler runs (docs/security.md)."""
    sock = fuzzed.config.socket_path
    base = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/csi.v1.Identity/Probe"),
        (":authority", "aiocsi"),
    ]
    for extra, http in (
        ([("content-type", "application/json"), ("te", "trailers")], "415"),
        ([("content-type", "application/grpc")], "400"),
        ([("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "x")], "200"),
    ):
        answer = grpc_request(sock, "", framed(b""), headers=base + extra)
        assert answer.headers.get(":status") == http, answer.headers
    _probe(fuzzed)
    assert_nothing_leaked(fuzzed)
