"""A finished call leaves nothing for the garbage collector: reference counting frees it.

Each call's grpclib streams used to stay in reference cycles (the interceptor's closures
set on them), ~40 objects per call that only a collection freed; under load those
collections ran several times a second and held the loop for up to ~20 ms each.
"""

from __future__ import annotations

import asyncio
import gc
from typing import TYPE_CHECKING

import pytest
from grpclib import server as grpclib_server
from grpclib.exceptions import GRPCError

from aiocsi._proto.csi import v1 as csi

from .conftest import mount_capability, volume_id_of

if TYPE_CHECKING:
    from .conftest import Driver

pytestmark = pytest.mark.system


def _server_streams() -> int:
    return sum(isinstance(o, grpclib_server.Stream) for o in gc.get_objects())


async def test_finished_calls_leave_no_streams_in_cycles(driver: Driver) -> None:
    gc.collect()
    gc.disable()
    try:
        before = _server_streams()
        for _ in range(20):
            await driver.client.identity.probe(csi.ProbeRequest())
        created = await driver.client.controller.create_volume(
            csi.CreateVolumeRequest(name="cycles", volume_capabilities=[mount_capability()])
        )
        await driver.client.controller.delete_volume(
            csi.DeleteVolumeRequest(volume_id=volume_id_of(created))
        )
        with pytest.raises(GRPCError):  # a refused call is released too
            await driver.client.controller.delete_volume(csi.DeleteVolumeRequest())
        # The server ends a call's task just after the reply has gone: give the last a
        # moment. A stream in a cycle would stay however long this waits.
        for _ in range(100):
            if _server_streams() == before:
                break
            await asyncio.sleep(0.01)
        assert _server_streams() - before == 0
    finally:
        gc.enable()
