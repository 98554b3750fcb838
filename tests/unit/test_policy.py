"""The engine enforces what a volume may ask for, whichever front end built the request."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from aiocsi.config import Config
from aiocsi.engine import policy
from aiocsi.engine.core import Engine
from aiocsi.engine.requests import CapacityRange, CreateVolume, PublishVolume, StageVolume
from aiocsi.errors import InvalidArgument
from aiocsi.models import AccessMode, AccessType, Capability

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def _mount(*flags: str, fs_type: str = "ext4") -> Capability:
    return Capability(AccessType.MOUNT, AccessMode.SINGLE_NODE_WRITER, fs_type, flags)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    # Never started: every refusal below comes before the engine touches state or host.
    built = Engine(
        Config(
            socket_path=tmp_path / "csi.sock",
            node_id="n",
            pool=tmp_path / "pool",
            allowed_mount_flags=frozenset({"exec"}),
        )
    )
    yield built
    built.workers.close()


async def test_stage_and_publish_refuse_flags_the_policy_refuses(engine: Engine) -> None:
    with pytest.raises(InvalidArgument, match="'suid' is not allowed"):
        await engine.node.stage(StageVolume("vol-1", "/s", _mount("noatime", "suid")))
    with pytest.raises(InvalidArgument, match="needs a read-only mount"):
        await engine.node.publish(
            PublishVolume(
                "vol-1",
                "/t",
                _mount("norecovery", fs_type="xfs"),
                read_only=False,
                staging_path="/s",
            )
        )
    with pytest.raises(InvalidArgument, match="'zfs' is not supported"):
        await engine.node.stage(StageVolume("vol-1", "/s", _mount(fs_type="zfs")))


async def test_inline_volume_parameters_are_the_engines(engine: Engine) -> None:
    context = {policy.EPHEMERAL_KEY: "true", policy.EPHEMERAL_SIZE_KEY: "lots"}
    with pytest.raises(InvalidArgument, match="volume_context size"):
        await engine.node.publish(
            PublishVolume("csi-1", "/t", _mount(), read_only=False, volume_context=context)
        )
    with pytest.raises(InvalidArgument, match="inline ephemeral volume"):
        await engine.node.publish(
            PublishVolume(
                "vol-" + "a" * 32,
                "/t",
                _mount(),
                read_only=False,
                volume_context={**context, "size": "1Mi"},
            )
        )


async def test_create_checks_parameters_and_capabilities(engine: Engine) -> None:
    with pytest.raises(InvalidArgument, match="unknown key 'speed'"):
        await engine.volumes.create(
            CreateVolume("v", CapacityRange(), (_mount(),), parameters={"speed": "fast"})
        )
    with pytest.raises(InvalidArgument, match=r"mount flag .dev. is not allowed"):
        await engine.volumes.create(CreateVolume("v", CapacityRange(), (_mount("dev"),)))


def test_the_operators_flags_pass_only_as_given() -> None:
    allowed = frozenset({policy.operator_mount_flag("exec")})
    policy.capability(_mount("exec"), "volume_capability", allowed)
    with pytest.raises(InvalidArgument, match="not allowed"):
        policy.capability(_mount("exec"), "volume_capability", frozenset())


def test_access_modes_and_sizes() -> None:
    assert policy.access_mode("SINGLE_NODE_WRITER", "c") is AccessMode.SINGLE_NODE_WRITER
    with pytest.raises(InvalidArgument, match="node-local"):
        policy.access_mode("MULTI_NODE_MULTI_WRITER", "c")
    with pytest.raises(InvalidArgument, match="exceeds limit_bytes"):
        policy.capacity_range(2, 1)
    assert policy.ephemeral_size({}) == 1 << 30


def _grouped(group: str) -> Capability:
    return Capability(AccessType.MOUNT, AccessMode.SINGLE_NODE_WRITER, "ext4", (), group)


@pytest.mark.parametrize("gid", [0, 1, 2000, 65534, policy.MAX_GID])
def test_a_mount_group_is_a_decimal_gid(gid: int) -> None:
    assert policy.mount_group(_grouped(str(gid)), "volume_capability") == gid


def test_no_mount_group_is_none() -> None:
    assert policy.mount_group(_grouped(""), "volume_capability") is None


@pytest.mark.parametrize(
    "group", ["wheel", "-1", "+7", "007", " 7", "7\n", "1e3", "٣", str(policy.MAX_GID + 1)]
)
def test_other_mount_groups_are_refused_naming_the_field(group: str) -> None:
    with pytest.raises(InvalidArgument, match=r"volume_capability\.mount\.volume_mount_group"):
        policy.capability(_grouped(group), "volume_capability", frozenset())
