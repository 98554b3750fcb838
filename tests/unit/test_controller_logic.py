"""Controller logic without a server: sizes, topology, parameters, page tokens, conditions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiocsi._proto.csi import v1 as csi
from aiocsi.config import TOPOLOGY_KEY
from aiocsi.engine import policy
from aiocsi.engine.paging import MAX_PAGE_SIZE, PAGE_SIZE
from aiocsi.engine.parameters import (
    MUTABLE_PARAMETERS,
    VOLUME_PARAMETERS,
    normalise,
    preallocate,
)
from aiocsi.engine.requests import CapacityRange, CreateVolume, TopologyRequirement
from aiocsi.engine.sizing import choose_size, minimum_size, topology_admits, why_incompatible
from aiocsi.engine.volumes.lookups import image_condition
from aiocsi.errors import InvalidArgument, InvalidToken, OutOfRange, grpc_code_name
from aiocsi.models import (
    AccessMode,
    AccessType,
    Capability,
    ContentSource,
    SourceKind,
    Volume,
    VolumeState,
)
from aiocsi.services.validation.controller import page
from aiocsi.services.validation.controller import volume_capabilities as translate_capabilities

if TYPE_CHECKING:
    from pathlib import Path

MiB = 1024 * 1024
DEFAULT = 64 * MiB
EXT4 = Capability(AccessType.MOUNT, AccessMode.SINGLE_NODE_WRITER, "ext4")
XFS = Capability(AccessType.MOUNT, AccessMode.SINGLE_NODE_WRITER, "xfs")
BLOCK = Capability(AccessType.BLOCK, AccessMode.SINGLE_NODE_WRITER)


# -- sizes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("required", "limit", "minimum", "floor", "expected"),
    [
        (0, 0, MiB, 0, DEFAULT),  # nothing asked: the default
        (0, 20 * MiB, MiB, 0, 20 * MiB),  # the default, capped by the limit
        (0, 6 * MiB + 512, MiB, 0, 6 * MiB),  # whole MiB below an odd limit
        (10 * MiB + 1, 0, MiB, 0, 11 * MiB),  # rounded up to whole MiB
        (10 * MiB + 1, 10 * MiB + 4096, MiB, 0, 10 * MiB + 4096),  # sectors when MiB won't do
        (5 * MiB + 512, 5 * MiB + 512, MiB, 0, 5 * MiB + 512),  # exact
        (MiB, 0, 4 * MiB, 0, 4 * MiB),  # the filesystem minimum
        (0, 0, 300 * MiB, 0, 300 * MiB),  # minimum above the default
        (8 * MiB, 0, MiB, 16 * MiB, 16 * MiB),  # the content source's size
        (0, 0, MiB, 100 * MiB + 3, 101 * MiB),
    ],
)
def test_choose_size(required: int, limit: int, minimum: int, floor: int, expected: int) -> None:
    assert choose_size(CapacityRange(required, limit), minimum, DEFAULT, floor) == expected


@pytest.mark.parametrize(
    ("required", "limit", "minimum", "floor"),
    [
        (0, 512 * 1024, MiB, 0),  # below the minimum
        (0, 200 * MiB, 300 * MiB, 0),  # xfs
        (3 * MiB, 3 * MiB + 100, 4 * MiB, 0),
        (10 * MiB + 1, 10 * MiB + 100, MiB, 0),  # no whole sector fits
        (0, 8 * MiB, MiB, 16 * MiB),  # source larger than the limit
    ],
)
def test_choose_size_out_of_range(required: int, limit: int, minimum: int, floor: int) -> None:
    with pytest.raises(OutOfRange) as info:
        choose_size(CapacityRange(required, limit), minimum, DEFAULT, floor)
    assert grpc_code_name(info.value) == "OUT_OF_RANGE"
    assert str(limit) in str(info.value)


@given(
    required=st.integers(0, 2**40),
    slack=st.one_of(st.none(), st.integers(0, 2**30)),
    minimum=st.sampled_from([MiB, 4 * MiB, 256 * MiB, 300 * MiB]),
    floor=st.integers(0, 2**36),
)
def test_choose_size_is_within_the_range(
    required: int, slack: int | None, minimum: int, floor: int
) -> None:
    limit = 0 if slack is None else required + slack
    capacity = CapacityRange(required, limit)
    needed = max(required, minimum, floor)
    try:
        size = choose_size(capacity, minimum, DEFAULT, floor)
    except OutOfRange:
        # Only when no whole sector between `needed` and `limit` exists.
        assert limit
        assert limit // 512 * 512 < needed
        return
    assert size >= needed
    assert size % 512 == 0
    assert capacity.admits(size)
    if not limit:
        assert size % MiB == 0


def test_minimum_size_follows_the_largest_filesystem() -> None:
    assert minimum_size(()) == MiB
    assert minimum_size((BLOCK,)) == MiB
    assert minimum_size((EXT4,)) == 4 * MiB
    assert minimum_size((Capability(AccessType.MOUNT, AccessMode.SINGLE_NODE_WRITER),)) == 4 * MiB
    assert minimum_size((EXT4, XFS, BLOCK)) == 300 * MiB


# -- topology -----------------------------------------------------------------------------


def seg(node: str) -> dict[str, str]:
    return {TOPOLOGY_KEY: node}


@pytest.mark.parametrize(
    ("requirement", "admitted"),
    [
        (None, True),
        (TopologyRequirement(), True),
        (TopologyRequirement(requisite=(seg("me"),)), True),
        (TopologyRequirement(requisite=(seg("other"), seg("me"))), True),
        (TopologyRequirement(requisite=(seg("other"),)), False),
        (TopologyRequirement(requisite=(seg("other"),), preferred=(seg("other"),)), False),
        (TopologyRequirement(requisite=({"zone": "a"},)), False),
        (TopologyRequirement(requisite=({TOPOLOGY_KEY: "me", "zone": "a"},)), False),
        # preferred alone does not constrain (CSI: the SP may choose any topology)
        (TopologyRequirement(preferred=(seg("other"),)), True),
    ],
)
def test_topology_admits(requirement: TopologyRequirement | None, admitted: bool) -> None:
    assert topology_admits(requirement, "me") is admitted


# -- parameters ---------------------------------------------------------------------------


def test_normalise_canonicalises_and_drops_co_keys() -> None:
    given_params = {
        "preallocate": " True ",
        "csi.storage.k8s.io/pvc/name": "claim",
        "csi.storage.k8s.io/pv/name": "pv-1",
    }
    assert normalise(given_params, VOLUME_PARAMETERS, "parameters") == {"preallocate": "true"}
    assert normalise({"preallocate": "FALSE"}, MUTABLE_PARAMETERS, "m") == {"preallocate": "false"}
    assert normalise({}, VOLUME_PARAMETERS, "parameters") == {}


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"colour": "blue"}, ("unknown key 'colour'", "preallocate")),
        ({"preallocate": "yes"}, ("preallocate='yes'", "false, true")),
        ({"preallocate": ""}, ("preallocate=''",)),
    ],
)
def test_normalise_refuses_with_a_useful_message(
    params: dict[str, str], words: tuple[str, ...]
) -> None:
    with pytest.raises(InvalidArgument) as info:
        normalise(params, VOLUME_PARAMETERS, "parameters")
    for word in words:
        assert word in str(info.value)


def test_snapshot_parameters_accept_only_co_keys() -> None:
    assert normalise({"csi.storage.k8s.io/volumesnapshot/name": "s"}, {}, "parameters") == {}
    with pytest.raises(InvalidArgument, match="supported: none"):
        normalise({"x": "y"}, {}, "parameters")


def test_mutable_preallocate_overrides_the_storage_class() -> None:
    assert preallocate({}) is False
    assert preallocate({"preallocate": "true"}) is True
    assert preallocate({"preallocate": "true"}, {}) is True
    assert preallocate({"preallocate": "true"}, {"preallocate": "false"}) is False
    assert preallocate({}, {"preallocate": "true"}) is True


# -- idempotency --------------------------------------------------------------------------


def _volume(**changes: object) -> Volume:
    fields: dict[str, object] = {
        "id": "vol-" + "0" * 32,
        "name": "pvc",
        "capacity_bytes": 16 * MiB,
        "state": VolumeState.READY,
        "node_id": "me",
        "parameters": {},
    }
    fields.update(changes)
    return Volume(**fields)  # type: ignore[arg-type]


def _request(**changes: object) -> CreateVolume:
    fields: dict[str, object] = {
        "name": "pvc",
        "capacity": CapacityRange(16 * MiB),
        "capabilities": (EXT4,),
    }
    fields.update(changes)
    return CreateVolume(**fields)  # type: ignore[arg-type]


def test_compatible_create_requests() -> None:
    existing = _volume()
    assert why_incompatible(existing, _request(), {}) is None
    assert why_incompatible(existing, _request(capacity=CapacityRange(0, 16 * MiB)), {}) is None
    assert why_incompatible(existing, _request(capacity=CapacityRange(32 * MiB)), {}) is not None
    assert why_incompatible(existing, _request(capacity=CapacityRange(0, 8 * MiB)), {}) is not None
    assert why_incompatible(existing, _request(), {"preallocate": "true"}) is not None
    source = ContentSource(SourceKind.SNAPSHOT, "snap-" + "1" * 32)
    assert why_incompatible(existing, _request(source=source), {}) is not None
    assert why_incompatible(_volume(source=source), _request(source=source), {}) is None
    assert why_incompatible(existing, _request(capabilities=(XFS,)), {}) is not None


# -- page tokens --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_entries", "token", "expected"),
    [
        (0, "", (0, PAGE_SIZE)),
        (5, "", (0, 5)),
        (2, "17", (17, 2)),
        (0, "123456789012345678", (123456789012345678, PAGE_SIZE)),
        (MAX_PAGE_SIZE + 1, "", (0, MAX_PAGE_SIZE)),
    ],
)
def test_page_accepts_issued_tokens(
    max_entries: int, token: str, expected: tuple[int, int]
) -> None:
    assert page(max_entries, token) == expected


@pytest.mark.parametrize(
    "token", ["abc", "-1", "+1", "0", "007", "1e3", "²", "١٢", " 3", "3 ", "3\n", "9" * 19]
)
def test_page_refuses_foreign_tokens_with_aborted(token: str) -> None:
    with pytest.raises(InvalidToken) as info:
        page(0, token)
    assert grpc_code_name(info.value) == "ABORTED"


def test_page_refuses_negative_max_entries() -> None:
    with pytest.raises(InvalidArgument):
        page(-1, "")


# -- capabilities -------------------------------------------------------------------------


def _mount(*flags: str) -> csi.VolumeCapability:
    return csi.VolumeCapability(
        mount=csi.VolumeCapabilityMountVolume(fs_type="ext4", mount_flags=list(flags)),
        access_mode=csi.VolumeCapabilityAccessMode(
            mode=csi.VolumeCapabilityAccessModeMode.SINGLE_NODE_WRITER
        ),
    )


def volume_capabilities(messages: list[csi.VolumeCapability]) -> tuple[Capability, ...]:
    """Translated as the Controller service does, then checked as the engine does."""
    caps = translate_capabilities(messages)
    policy.capabilities(caps, "volume_capabilities", frozenset())
    return caps


def test_volume_capabilities_check_mount_flags_up_front() -> None:
    caps = volume_capabilities([_mount("noatime", "commit=30")])
    assert caps[0].mount_flags == ("noatime", "commit=30")
    for flag in ("bind", "remount", "loop=/dev/loop0", "data=/etc"):
        with pytest.raises(InvalidArgument, match="not allowed"):
            volume_capabilities([_mount(flag)])


# -- volume condition ---------------------------------------------------------------------


def test_image_condition(tmp_path: Path) -> None:
    image = tmp_path / "v.img"
    assert image_condition(image, MiB).abnormal is True
    assert "missing" in image_condition(image, MiB).message
    image.write_bytes(bytes(MiB // 2))
    truncated = image_condition(image, MiB)
    assert truncated.abnormal is True
    assert "truncated" in truncated.message
    image.write_bytes(bytes(MiB))
    assert image_condition(image, MiB).abnormal is False
