"""Bytes that decode, but not into what the proto declares: betterproto2 does not check
wire types, so the interceptor does before a handler sees the message."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiocsi._proto.csi import v1 as csi
from aiocsi.server.wire import wrong_wire_type


@pytest.mark.parametrize(
    ("message_type", "wire", "field"),
    [
        # a varint where a string belongs
        (csi.ControllerExpandVolumeRequest, b"\x08\x01", "volume_id"),
        # a group (wire type 3), which betterproto2 turns into None
        (csi.NodeStageVolumeRequest, b"\x0b", "volume_id"),
        # a varint where a message belongs
        (csi.CreateVolumeRequest, b"\x10\x05", "capacity_range"),
        # a map entry whose key is a varint
        (csi.CreateVolumeRequest, b"\x22\x02\x08\x01", "parameters"),
        # length-delimited where an int32 / a bool belongs
        (csi.ListVolumesRequest, b"\x0a\x01a", "max_entries"),
        (csi.NodePublishVolumeRequest, b"\x32\x01\x01", "readonly"),
        # nested: an enum sent as length-delimited, inside a repeated message
        (
            csi.CreateVolumeRequest,
            b"\x1a\x04\x1a\x02\x0a\x00",
            "volume_capabilities[0].access_mode.mode",
        ),
    ],
)
def test_wrong_wire_types_are_named(message_type: type, wire: bytes, field: str) -> None:
    assert wrong_wire_type(message_type.parse(wire)) == field  # type: ignore[attr-defined]


def test_well_formed_messages_pass() -> None:
    request = csi.CreateVolumeRequest(
        name="x",
        capacity_range=csi.CapacityRange(required_bytes=1),
        parameters={"a": "b"},
        volume_capabilities=[
            csi.VolumeCapability(
                mount=csi.VolumeCapabilityMountVolume(mount_flags=["noatime"]),
                access_mode=csi.VolumeCapabilityAccessMode(
                    mode=csi.VolumeCapabilityAccessModeMode(99)  # unknown, but an enum
                ),
            )
        ],
    )
    assert wrong_wire_type(csi.CreateVolumeRequest.parse(bytes(request))) is None


@given(st.binary(max_size=64))
def test_any_bytes_either_fail_to_decode_or_are_checked(wire: bytes) -> None:
    try:
        message = csi.NodeStageVolumeRequest.parse(wire)
    except Exception:  # noqa: BLE001 - the interceptor turns these into INVALID_ARGUMENT
        return
    wrong = wrong_wire_type(message)
    if wrong is None:  # then every field really has its declared type
        assert isinstance(message.volume_id, str)
        assert isinstance(message.staging_target_path, str)
        assert isinstance(message.secrets, dict)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in message.secrets.items())
