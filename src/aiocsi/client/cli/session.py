"""One connection to a driver: what it offers, and the one place call failures are explained.

Before a call, the capabilities the driver advertises are checked (GetPluginCapabilities,
ControllerGetCapabilities, NodeGetCapabilities, each asked once): a missing service or
capability is named instead of making the call. A driver that does not say (no
ControllerGetCapabilities, say) is simply called, and an UNIMPLEMENTED answer is explained
the same way.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from aiocsi._proto.csi import v1 as csi
from aiocsi.client.codes import unreachable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiocsi.client.cli.render import Output
    from aiocsi.client.stubs import CsiStubs

T = TypeVar("T")
E = TypeVar("E")
EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
Ctrl = csi.ControllerServiceCapabilityRpcType
NodeCap = csi.NodeServiceCapabilityRpcType
CONTROLLER, NODE, IDENTITY = "Controller", "Node", "Identity"
# grpclib's answer for a method the server has no handler for: not worth repeating.
_NO_HANDLER = "Method not found"
# A grpclib server answers an unknown method with a trailers-only UNIMPLEMENTED that has no
# content-type, and a grpclib client then reports only this (grpclib 0.4.9). Our requests
# always carry their content-type, so the answer can only have been that refusal.
_NO_HANDLER_SEEN_BY_GRPCLIB = "Missing content-type header"


class ClientError(Exception):
    """One line for stderr, `<code>: <message>`, and the exit code of its class."""

    def __init__(self, code: str, message: str, exit_code: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.exit_code = code, message, exit_code


async def follow_pages(
    fetch: Callable[[str], Awaitable[tuple[list[E], str]]], start: str, *, one_page: bool
) -> tuple[list[E], str]:
    """Every entry from `start` on (or one page), and the token of what is left."""
    entries, token, seen = [], start, {start}
    while True:
        page, token = await fetch(token)
        entries += page
        if one_page or not token:
            return entries, token
        if token in seen:
            raise refused("BAD_RESPONSE", f"the driver handed out next_token {token!r} twice")
        seen.add(token)


class PartialFailure(Exception):
    """Some of several calls failed, each already reported on stderr: print the rest."""

    def __init__(self, exit_code: int, output: Output) -> None:
        super().__init__(f"{exit_code}")
        self.exit_code, self.output = exit_code, output


def refused(code: str, message: str) -> ClientError:
    return ClientError(code, message, EXIT_REFUSED)


def bad_usage(message: str) -> ClientError:
    return ClientError("USAGE", message, EXIT_USAGE)


@dataclass(frozen=True)
class Rpc:
    """A CSI call and what a driver advertises when it offers it."""

    service: str
    method: str
    capability: Ctrl | NodeCap | None = None

    def wants(self) -> str:
        if self.capability is None:
            return self.method
        kind = "controller" if self.service == CONTROLLER else "node"
        return f"{self.method} ({kind} capability {self.capability.name})"


class Session:
    """The stubs of one driver, the command being run, and what the driver offers."""

    def __init__(self, stubs: CsiStubs, endpoint: str, timeout: float, command: str) -> None:
        self.stubs, self.endpoint, self.timeout, self.command = stubs, endpoint, timeout, command
        self._plugin: csi.GetPluginCapabilitiesResponse | None = None
        self._plugin_asked = False
        # None: not asked yet; False: the service is not there; a set: what it advertises;
        # True: the service is there but does not say what it offers.
        self._offers: dict[str, frozenset[Ctrl | NodeCap] | bool] = {}

    async def call(self, rpc: Rpc, call: Callable[[float], Awaitable[T]]) -> T:
        """Check that the driver offers `rpc`, then make the call; failures explained."""
        await self.require(rpc)
        return await self.raw(rpc, call)

    async def require(self, rpc: Rpc, hint: str = "") -> None:
        if await self.offers(rpc) is False:
            # The hint names another way in the same service; without the service, none.
            service_there = self._offers.get(rpc.service) is not False
            raise refused("UNIMPLEMENTED", self._missing(rpc) + (hint if service_there else ""))

    async def raw(self, rpc: Rpc, call: Callable[[float], Awaitable[T]]) -> T:
        try:
            return await call(self.timeout)
        except GRPCError as exc:
            if exc.status is Status.UNIMPLEMENTED or (
                exc.status is Status.UNKNOWN and exc.message == _NO_HANDLER_SEEN_BY_GRPCLIB
            ):
                plain = (None, "", _NO_HANDLER, _NO_HANDLER_SEEN_BY_GRPCLIB)
                detail = "" if exc.message in plain else f": {exc.message}"
                raise refused("UNIMPLEMENTED", self._missing(rpc) + detail) from None
            raise refused(exc.status.name, exc.message or "(the driver gave no message)") from None
        except TimeoutError:
            raise ClientError(
                "DEADLINE_EXCEEDED",
                f"{rpc.method}: no answer from {self.endpoint} within {self.timeout:g} s "
                "(--timeout)",
                EXIT_UNREACHABLE,
            ) from None
        except Exception as exc:
            if not unreachable(exc):
                raise
            raise ClientError("UNAVAILABLE", self._why_unreachable(exc), EXIT_UNREACHABLE) from None

    def report(self, error: ClientError) -> None:
        """A failure among several calls: said at once, the command goes on."""
        sys.stderr.write(f"{error}\n")

    async def offers(self, rpc: Rpc) -> bool | None:
        """True or False when the driver says; None when it does not."""
        if rpc.service == IDENTITY:
            return True
        known = self._offers.get(rpc.service)
        if known is None:
            known = await self._ask(rpc.service)
            self._offers[rpc.service] = known
        if isinstance(known, bool):
            return False if known is False else None
        return rpc.capability is None or rpc.capability in known

    async def offered(self, rpc: Rpc) -> bool:
        """Whether a call is worth trying (offered, or the driver does not say)."""
        return await self.offers(rpc) is not False

    async def plugin_capabilities(self) -> csi.GetPluginCapabilitiesResponse | None:
        """The driver's GetPluginCapabilities reply (asked once), None if it has none."""
        if not self._plugin_asked:
            try:
                self._plugin = await self.raw(
                    Rpc(IDENTITY, "GetPluginCapabilities"),
                    lambda t: self.stubs.identity.get_plugin_capabilities(
                        csi.GetPluginCapabilitiesRequest(), timeout=t
                    ),
                )
            except ClientError as exc:
                if exc.code != "UNIMPLEMENTED":
                    raise
            self._plugin_asked = True
        return self._plugin

    async def plugin_services(self) -> frozenset[csi.PluginCapabilityServiceType] | None:
        reply = await self.plugin_capabilities()
        if reply is None:
            return None
        return frozenset(c.service.type for c in reply.capabilities if c.service is not None)

    async def _ask(self, service: str) -> frozenset[Ctrl | NodeCap] | bool:
        if service == CONTROLLER:
            plugin = await self.plugin_services()
            if plugin is not None and (
                csi.PluginCapabilityServiceType.CONTROLLER_SERVICE not in plugin
            ):
                return False
        try:
            return await self._capabilities(service)
        except ClientError as exc:
            if exc.code != "UNIMPLEMENTED":
                raise
            # No NodeGetCapabilities means no Node service (it is required there); a
            # controller that advertises itself but not its RPCs is called and heard.
            return service == CONTROLLER

    async def _capabilities(self, service: str) -> frozenset[Ctrl | NodeCap]:
        if service == CONTROLLER:
            controller = await self.raw(
                Rpc(CONTROLLER, "ControllerGetCapabilities"),
                lambda t: self.stubs.controller.controller_get_capabilities(
                    csi.ControllerGetCapabilitiesRequest(), timeout=t
                ),
            )
            return frozenset(c.rpc.type for c in controller.capabilities if c.rpc is not None)
        node = await self.raw(
            Rpc(NODE, "NodeGetCapabilities"),
            lambda t: self.stubs.node.node_get_capabilities(
                csi.NodeGetCapabilitiesRequest(), timeout=t
            ),
        )
        return frozenset(c.rpc.type for c in node.capabilities if c.rpc is not None)

    def _missing(self, rpc: Rpc) -> str:
        if self._offers.get(rpc.service) is False:
            return (
                f"the driver does not offer the {rpc.service} service: "
                f"`aiocsi {self.command}` needs its {rpc.wants()}"
            )
        return f"the driver does not offer {rpc.wants()}, which `aiocsi {self.command}` needs"

    def _why_unreachable(self, exc: Exception) -> str:
        path = self.endpoint
        hint = "is the driver running? set --endpoint or CSI_ENDPOINT"
        if isinstance(exc, FileNotFoundError):
            return f"no socket at {path} ({hint})"
        if isinstance(exc, PermissionError):
            return f"{path}: permission denied (run as root or as a member of the socket's group)"
        if isinstance(exc, ConnectionRefusedError):
            try:
                is_socket = stat.S_ISSOCK(os.stat(path).st_mode)  # noqa: PTH116 - a str path
            except OSError:
                is_socket = False
            if not is_socket:
                return f"{path} is not a socket ({hint})"
            return f"nobody is listening on {path} (a socket left behind by a driver that is gone?)"
        return f"the connection to {path} failed: {exc} ({hint})"
