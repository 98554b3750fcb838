"""`aiocsi info`: who the driver is, what it offers, where it runs, whether it is ready."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from aiocsi._proto.csi import v1 as csi
from aiocsi.client.cli.render import Fields, Json, Output, message_json, pairs
from aiocsi.client.cli.session import CONTROLLER, IDENTITY, NODE, ClientError, Rpc

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable

    import betterproto2

    from aiocsi.client.cli.session import Session

M = TypeVar("M", bound="betterproto2.Message")
NOT_OFFERED = "not offered"


async def _optional(session: Session, rpc: Rpc, call: Callable[[float], Awaitable[M]]) -> M | None:
    try:
        return await session.raw(rpc, call)
    except ClientError as exc:
        if exc.code != "UNIMPLEMENTED":
            raise
        return None


def _doc(message: betterproto2.Message | None) -> Json:
    return None if message is None else message_json(message)


def _plugin_capabilities(reply: csi.GetPluginCapabilitiesResponse | None) -> str:
    if reply is None:
        return NOT_OFFERED
    names = [c.service.type.name for c in reply.capabilities if c.service is not None]
    names += [
        f"VOLUME_EXPANSION_{c.volume_expansion.type.name}"
        for c in reply.capabilities
        if c.volume_expansion is not None
    ]
    return ", ".join(names) or "-"


def _rpc_names(
    reply: csi.ControllerGetCapabilitiesResponse | csi.NodeGetCapabilitiesResponse | None,
) -> str:
    if reply is None:
        return NOT_OFFERED
    return ", ".join(c.rpc.type.name for c in reply.capabilities if c.rpc is not None) or "-"


def _node(reply: csi.NodeGetInfoResponse | None) -> Fields:
    fields = Fields("Node")
    if reply is None:
        return fields.add("node", NOT_OFFERED)
    topology = reply.accessible_topology
    fields.add("node id", reply.node_id)
    fields.add("max volumes", reply.max_volumes_per_node or "no limit")
    return fields.add("topology", pairs(topology.segments) if topology is not None else "-")


async def info(session: Session, _args: argparse.Namespace) -> Output:
    identity, controller, node = (
        session.stubs.identity,
        session.stubs.controller,
        session.stubs.node,
    )
    plugin = await session.raw(
        Rpc(IDENTITY, "GetPluginInfo"),
        lambda t: identity.get_plugin_info(csi.GetPluginInfoRequest(), timeout=t),
    )
    capabilities = await session.plugin_capabilities()
    probe = await session.raw(
        Rpc(IDENTITY, "Probe"), lambda t: identity.probe(csi.ProbeRequest(), timeout=t)
    )
    services = await session.plugin_services()
    controller_caps = None
    if services is None or csi.PluginCapabilityServiceType.CONTROLLER_SERVICE in services:
        controller_caps = await _optional(
            session,
            Rpc(CONTROLLER, "ControllerGetCapabilities"),
            lambda t: controller.controller_get_capabilities(
                csi.ControllerGetCapabilitiesRequest(), timeout=t
            ),
        )
    node_caps = await _optional(
        session,
        Rpc(NODE, "NodeGetCapabilities"),
        lambda t: node.node_get_capabilities(csi.NodeGetCapabilitiesRequest(), timeout=t),
    )
    node_info = await _optional(
        session,
        Rpc(NODE, "NodeGetInfo"),
        lambda t: node.node_get_info(csi.NodeGetInfoRequest(), timeout=t),
    )
    document: Json = {
        "plugin_info": message_json(plugin),
        "plugin_capabilities": _doc(capabilities),
        "probe": message_json(probe),
        "controller_capabilities": _doc(controller_caps),
        "node_capabilities": _doc(node_caps),
        "node_info": _doc(node_info),
    }
    summary = Fields(f"Driver {plugin.name}")
    summary.add("version", plugin.vendor_version)
    if plugin.manifest:
        summary.add("manifest", pairs(plugin.manifest))
    # An unset `ready` means ready (CSI spec, Probe).
    summary.add("ready", "no" if probe.ready is False else "yes")
    summary.add("plugin", _plugin_capabilities(capabilities))
    summary.add("controller", _rpc_names(controller_caps))
    summary.add("node", _rpc_names(node_caps))
    return Output(document, [summary, _node(node_info)])
