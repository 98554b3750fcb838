"""The generated grpclib clients of every CSI service, on one connection to a driver socket."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from grpclib.client import Channel

from aiocsi._proto.csi import v1 as csi
from aiocsi.client.codes import NotReady

if TYPE_CHECKING:
    from pathlib import Path


@dataclass
class CsiStubs:
    """Generated grpclib clients on one connection to a driver socket."""

    channel: Channel
    identity: csi.IdentityStub
    controller: csi.ControllerStub
    node: csi.NodeStub

    @classmethod
    def connect(cls, socket_path: Path) -> CsiStubs:
        """Make the stubs; the connection itself is opened by the first call."""
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
